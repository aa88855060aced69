//! Turning a fetched block range into a commit: `blocks`, `logs` and every decoded table, each
//! table's Parquet encoded in parallel on rayon. Shared by the backfill and the tail.

use crate::dataset::ChunkCommit;
use crate::error::{Error, Result};
use crate::parquet_io::encode_parquet;
use rayon::prelude::*;
use std::collections::BTreeMap;
use tidewater_chain::{encode, schema, BlockRange, EventCatalog, PoolSet, RangeData};

/// A chunk ready to commit.
#[derive(Debug)]
pub struct EncodedChunk {
    /// The files and manifest entry.
    pub commit: ChunkCommit,
    /// Rows of every table (empty ones included).
    pub rows: BTreeMap<String, u64>,
    /// Logs kept in `logs` but left out of their decoded table (they do not decode).
    pub skipped: Vec<encode::SkippedLog>,
}

/// Decodes and encodes `data` (the complete content of `range`). CPU-bound: call it on rayon.
pub fn encode_chunk(
    catalog: &EventCatalog,
    data: &RangeData,
    chain_id: u64,
    pools: &PoolSet,
    range: BlockRange,
) -> Result<EncodedChunk> {
    let decode_err = |source| Error::Decode { start: range.start, end: range.end, source };
    let first =
        data.headers.first().ok_or(Error::EmptyChunk { start: range.start, end: range.end })?;
    let last =
        data.headers.last().ok_or(Error::EmptyChunk { start: range.start, end: range.end })?;
    let decoded = encode::decode_batches(catalog, &data.logs, |a, b| pools.is_pool_at(a, b))
        .map_err(decode_err)?;
    let mut batches = decoded.batches;
    batches
        .insert(schema::LOGS.into(), encode::logs_batch(&data.logs, chain_id).map_err(decode_err)?);
    batches.insert(
        schema::BLOCKS.into(),
        encode::blocks_batch(&data.blocks, chain_id).map_err(decode_err)?,
    );
    let rows: BTreeMap<String, u64> =
        batches.iter().map(|(t, b)| (t.clone(), b.num_rows() as u64)).collect();
    let files = batches
        .par_iter()
        .filter(|(_, b)| b.num_rows() > 0)
        .map(|(t, b)| Ok((t.clone(), (encode_parquet(t, b)?, b.num_rows() as u64))))
        .collect::<Result<BTreeMap<_, _>>>()?;
    if (first.number, last.number) != (range.start, range.end) {
        return Err(Error::EmptyChunk { start: range.start, end: range.end });
    }
    let commit = ChunkCommit {
        start: range.start,
        end: range.end,
        first_block_hash: first.hash,
        last_block_hash: last.hash,
        files,
    };
    Ok(EncodedChunk { commit, rows, skipped: decoded.skipped })
}
