//! Turning a fetched block range into a commit: `blocks`, `logs` and every decoded table, each
//! table's Parquet encoded in parallel on rayon. Shared by the backfill and the tail.

use crate::dataset::ChunkCommit;
use crate::error::{Error, Result};
use crate::parquet_io::encode_parquet;
use rayon::prelude::*;
use std::collections::BTreeMap;
use tidewater_chain::{encode, schema, BlockRange, EventCatalog, PoolSet, RangeData};

/// Decodes and encodes `data` (the complete content of `range`). CPU-bound: call it on rayon.
/// Returns the commit and the row count of every table (empty ones included).
pub fn encode_chunk(
    catalog: &EventCatalog,
    data: &RangeData,
    chain_id: u64,
    pools: &PoolSet,
    range: BlockRange,
) -> Result<(ChunkCommit, BTreeMap<String, u64>)> {
    let decode_err = |source| Error::Decode { start: range.start, end: range.end, source };
    let mut batches = encode::decode_batches(catalog, &data.logs, |a, b| pools.is_pool_at(a, b))
        .map_err(decode_err)?;
    batches
        .insert(schema::LOGS.into(), encode::logs_batch(&data.logs, chain_id).map_err(decode_err)?);
    batches.insert(
        schema::BLOCKS.into(),
        encode::blocks_batch(&data.headers, chain_id).map_err(decode_err)?,
    );
    let rows: BTreeMap<String, u64> =
        batches.iter().map(|(t, b)| (t.clone(), b.num_rows() as u64)).collect();
    let files = batches
        .par_iter()
        .filter(|(_, b)| b.num_rows() > 0)
        .map(|(t, b)| Ok((t.clone(), (encode_parquet(t, b)?, b.num_rows() as u64))))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let first = data.headers.first().expect("invariant: a chunk has headers");
    let last = data.headers.last().expect("invariant: a chunk has headers");
    debug_assert_eq!((first.number, last.number), (range.start, range.end));
    let commit = ChunkCommit {
        start: range.start,
        end: range.end,
        first_block_hash: first.hash.to_string(),
        last_block_hash: last.hash.to_string(),
        files,
    };
    Ok((commit, rows))
}
