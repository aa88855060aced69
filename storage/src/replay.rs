//! Reading committed blocks back: headers and raw logs of cold chunks, for consumers that
//! replay them (a deep reorg's reverts, a read-only server following a data directory).

use tidewater_chain::Header;

/// The headers and logs of committed chunks, read back from the cold tier, oldest first.
pub fn cold_blocks(
    root: &std::path::Path,
    chunks: &[crate::ChunkEntry],
) -> crate::Result<Vec<(Header, Vec<tidewater_chain::Log>)>> {
    use arrow::array::{Array, BinaryArray, UInt32Array, UInt64Array};
    use tidewater_chain::schema::{BLOCKS, LOGS, TOPICS};
    let mut out: Vec<(Header, Vec<tidewater_chain::Log>)> = Vec::new();
    for c in chunks {
        let mut index = std::collections::HashMap::new();
        if let Some(f) = c.tables.get(BLOCKS) {
            let path = root.join(&f.path);
            for b in crate::read_parquet(&path)? {
                let bin = |c: &str| column::<BinaryArray>(&b, c, &path);
                let u64s = |c: &str| column::<UInt64Array>(&b, c, &path);
                let (n, h, p, ts, bloom) = (
                    u64s("block_number")?,
                    bin("block_hash")?,
                    bin("parent_hash")?,
                    u64s("timestamp")?,
                    bin("logs_bloom")?,
                );
                for i in 0..b.num_rows() {
                    index.insert(n.value(i), out.len());
                    // A block known only from its logs has no parent hash or bloom: zero.
                    let parent = if p.is_null(i) {
                        tidewater_chain::B256::ZERO
                    } else {
                        fixed(p.value(i), &path, "parent_hash")?
                    };
                    let logs_bloom = if bloom.is_null(i) {
                        tidewater_chain::Bloom::ZERO
                    } else {
                        tidewater_chain::Bloom::new(fixed(bloom.value(i), &path, "logs_bloom")?)
                    };
                    out.push((
                        Header {
                            number: n.value(i),
                            hash: fixed(h.value(i), &path, "block_hash")?,
                            parent_hash: parent,
                            timestamp: ts.value(i),
                            logs_bloom,
                        },
                        Vec::new(),
                    ));
                }
            }
        }
        if let Some(f) = c.tables.get(LOGS) {
            let path = root.join(&f.path);
            for b in crate::read_parquet(&path)? {
                let bin = |c: &str| column::<BinaryArray>(&b, c, &path);
                let n = column::<UInt64Array>(&b, "block_number", &path)?;
                let u32s = |c: &str| column::<UInt32Array>(&b, c, &path);
                let (ti, li) = (u32s("transaction_index")?, u32s("log_index")?);
                let (bh, th, addr, data) =
                    (bin("block_hash")?, bin("transaction_hash")?, bin("address")?, bin("data")?);
                let topics: Vec<&BinaryArray> =
                    TOPICS.iter().map(|t| bin(t)).collect::<crate::Result<_>>()?;
                for i in 0..b.num_rows() {
                    let Some(at) = index.get(&n.value(i)) else { continue };
                    let mut log_topics = Vec::with_capacity(4);
                    for t in topics.iter().filter(|t| !t.is_null(i)) {
                        log_topics.push(fixed(t.value(i), &path, "topic")?);
                    }
                    out[*at].1.push(tidewater_chain::Log {
                        address: tidewater_chain::Address::new(fixed(
                            addr.value(i),
                            &path,
                            "address",
                        )?),
                        topics: log_topics,
                        data: data.value(i).to_vec().into(),
                        block_number: n.value(i),
                        block_hash: fixed(bh.value(i), &path, "block_hash")?,
                        transaction_hash: fixed(th.value(i), &path, "transaction_hash")?,
                        transaction_index: u64::from(ti.value(i)),
                        log_index: u64::from(li.value(i)),
                        removed: false,
                        block_timestamp: None,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// A column of the type the schema gives it, or [`crate::Error::Malformed`] naming the file:
/// a file with another shape is damaged input, never an invariant.
pub fn column<'a, T: 'static>(
    b: &'a arrow::record_batch::RecordBatch,
    name: &str,
    path: &std::path::Path,
) -> crate::Result<&'a T> {
    b.column_by_name(name).and_then(|a| a.as_any().downcast_ref::<T>()).ok_or_else(|| {
        crate::Error::Malformed {
            path: path.to_path_buf(),
            what: format!("column {name} is missing or has another type"),
        }
    })
}

/// A fixed-size value (hash, address, bloom) from a binary cell of exactly `N` bytes, or
/// [`crate::Error::Malformed`] naming the file.
pub fn fixed<T: From<[u8; N]>, const N: usize>(
    bytes: &[u8],
    path: &std::path::Path,
    what: &str,
) -> crate::Result<T> {
    <[u8; N]>::try_from(bytes).map(T::from).map_err(|_| crate::Error::Malformed {
        path: path.to_path_buf(),
        what: format!("{what} has {} bytes, expected {N}", bytes.len()),
    })
}
