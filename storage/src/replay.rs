//! Reading committed blocks back: headers and raw logs of cold chunks, for consumers that
//! replay them (a deep reorg's reverts, a read-only server following a data directory).

use tidewater_chain::{Header, B256};

/// The headers and logs of committed chunks, read back from the cold tier, oldest first.
pub fn cold_blocks(
    root: &std::path::Path,
    chunks: &[crate::ChunkEntry],
) -> crate::Result<Vec<(Header, Vec<tidewater_chain::Log>)>> {
    use arrow::array::{Array, BinaryArray, UInt32Array, UInt64Array};
    use tidewater_chain::schema::{BLOCKS, LOGS, TOPICS};
    let mut out: Vec<(Header, Vec<tidewater_chain::Log>)> = Vec::new();
    let bin = |b: &arrow::record_batch::RecordBatch, c: &str| {
        b.column_by_name(c)
            .and_then(|a| a.as_any().downcast_ref::<BinaryArray>())
            .cloned()
            .expect("invariant: cold schema")
    };
    let u64s = |b: &arrow::record_batch::RecordBatch, c: &str| {
        b.column_by_name(c)
            .and_then(|a| a.as_any().downcast_ref::<UInt64Array>())
            .cloned()
            .expect("invariant: cold schema")
    };
    for c in chunks {
        let mut index = std::collections::HashMap::new();
        if let Some(f) = c.tables.get(BLOCKS) {
            for b in crate::read_parquet(&root.join(&f.path))? {
                let (n, h, p, ts, bloom) = (
                    u64s(&b, "block_number"),
                    bin(&b, "block_hash"),
                    bin(&b, "parent_hash"),
                    u64s(&b, "timestamp"),
                    bin(&b, "logs_bloom"),
                );
                for i in 0..b.num_rows() {
                    index.insert(n.value(i), out.len());
                    out.push((
                        Header {
                            number: n.value(i),
                            hash: B256::from_slice(h.value(i)),
                            parent_hash: B256::from_slice(p.value(i)),
                            timestamp: ts.value(i),
                            logs_bloom: tidewater_chain::Bloom::from_slice(bloom.value(i)),
                        },
                        Vec::new(),
                    ));
                }
            }
        }
        if let Some(f) = c.tables.get(LOGS) {
            for b in crate::read_parquet(&root.join(&f.path))? {
                let n = u64s(&b, "block_number");
                let u32s = |c: &str| {
                    b.column_by_name(c)
                        .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
                        .cloned()
                        .expect("invariant: cold schema")
                };
                let (ti, li) = (u32s("transaction_index"), u32s("log_index"));
                let (bh, th, addr, data) = (
                    bin(&b, "block_hash"),
                    bin(&b, "transaction_hash"),
                    bin(&b, "address"),
                    bin(&b, "data"),
                );
                let topics: Vec<BinaryArray> = TOPICS.iter().map(|t| bin(&b, t)).collect();
                for i in 0..b.num_rows() {
                    let Some(at) = index.get(&n.value(i)) else { continue };
                    out[*at].1.push(tidewater_chain::Log {
                        address: tidewater_chain::Address::from_slice(addr.value(i)),
                        topics: topics
                            .iter()
                            .filter(|t| !t.is_null(i))
                            .map(|t| B256::from_slice(t.value(i)))
                            .collect(),
                        data: data.value(i).to_vec().into(),
                        block_number: n.value(i),
                        block_hash: B256::from_slice(bh.value(i)),
                        transaction_hash: B256::from_slice(th.value(i)),
                        transaction_index: u64::from(ti.value(i)),
                        log_index: u64::from(li.value(i)),
                        removed: false,
                    });
                }
            }
        }
    }
    Ok(out)
}
