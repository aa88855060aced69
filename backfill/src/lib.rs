//! # tidewater-backfill
//!
//! Owns historical ranges: plans the chunks a data directory is missing ([`plan_chunks`]),
//! discovers the factory's pools, fetches chunks concurrently on tokio, decodes and encodes them
//! on rayon, and commits them in block order through the storage writer. It does not follow the
//! head.
//!
//! ```text
//!  plan_chunks ─▶ fetch_range (tokio, N chunks in flight, RPC semaphore)
//!                    │ RangeData
//!                    ▼
//!                 decode + Parquet encode (rayon, one task per table)
//!                    │ ChunkCommit (in block order: buffered stream)
//!                    ▼
//!                 DatasetWriter::commit (spawn_blocking: fsync, rename, manifest entry)
//! ```
//!
//! Invariants: a chunk is committed whole or not at all; a re-run plans only the gaps of the
//! manifest, so `kill -9` at any instant followed by a re-run yields the same dataset as an
//! uninterrupted run; cancellation is checked between commits, never inside one.
//!
//! ```no_run
//! # async fn run(rpc: tidewater_chain::RpcClient, writer: tidewater_storage::DatasetWriter) {
//! use tidewater_backfill::{Backfill, BackfillConfig};
//! use tidewater_chain::{BlockRange, Sources};
//! let cfg = BackfillConfig::new(BlockRange::new(0, 10_000));
//! let bf = Backfill::new(rpc, Sources::default(), 31337, cfg).unwrap();
//! let summary = bf.run(writer, tokio_util::sync::CancellationToken::new()).await.unwrap();
//! println!("{} logs", summary.logs);
//! # }
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod error;
mod range_plan;

pub use error::{Error, Result};
pub use range_plan::{plan_chunks, DEFAULT_CHUNK_SIZE};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tidewater_chain::{
    discover_pools, fetch_range, BlockRange, EventCatalog, LogFilter, PoolSet, RangeData,
    RangeSizer, RpcClient, Sources, SpawnedTask, DEFAULT_LOG_RANGE, DEFAULT_MAX_LOG_RANGE,
};
use tidewater_storage::{encode_chunk, ChunkCommit, DatasetWriter, Shard};
use tokio_util::sync::CancellationToken;

/// Chunks fetched or encoding at once. Four keeps the RPC semaphore busy while a chunk encodes
/// and bounds memory to four chunks' logs.
pub const DEFAULT_CHUNKS_IN_FLIGHT: usize = 4;
/// Times a chunk whose answers disagree (a lagging node) is refetched before giving up.
const INCONSISTENT_RETRIES: u32 = 5;

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// Blocks to cover (inclusive).
    pub range: BlockRange,
    /// Blocks per chunk.
    pub chunk_size: u64,
    /// Chunks in flight.
    pub chunks_in_flight: usize,
    /// This process's shard, if the range is split across processes.
    pub shard: Option<Shard>,
    /// First `eth_getLogs` span.
    pub log_range: u64,
    /// Largest `eth_getLogs` span.
    pub max_log_range: u64,
}

impl BackfillConfig {
    /// Defaults for `range`.
    pub fn new(range: BlockRange) -> Self {
        Self {
            range,
            chunk_size: DEFAULT_CHUNK_SIZE,
            chunks_in_flight: DEFAULT_CHUNKS_IN_FLIGHT,
            shard: None,
            log_range: DEFAULT_LOG_RANGE,
            max_log_range: DEFAULT_MAX_LOG_RANGE,
        }
    }
}

/// Live counters, readable while the backfill runs (progress bars, logs).
#[derive(Debug, Default)]
pub struct Progress {
    /// Blocks this run must cover.
    pub blocks_total: AtomicU64,
    /// Blocks committed by this run.
    pub blocks_done: AtomicU64,
    /// Logs committed by this run.
    pub logs_done: AtomicU64,
    /// Chunks this run must commit.
    pub chunks_total: AtomicU64,
    /// Chunks committed by this run.
    pub chunks_done: AtomicU64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// The requested range.
    pub range: (u64, u64),
    /// Chunks planned (gaps of the manifest, this shard's only).
    pub chunks_planned: u64,
    /// Chunks committed.
    pub chunks_committed: u64,
    /// Blocks committed.
    pub blocks: u64,
    /// Raw logs committed.
    pub logs: u64,
    /// Rows committed per table.
    pub rows: BTreeMap<String, u64>,
    /// Factory pools known.
    pub pools: usize,
    /// Blocks refetched because their bloom contradicted an empty answer.
    pub bloom_refetches: u64,
    /// Wall time, seconds.
    pub elapsed_secs: f64,
    /// Of which scanning the factory's PoolCreated logs, seconds.
    pub discovery_secs: f64,
    /// Whether the run stopped early on a cancellation (committed chunks stay committed).
    pub cancelled: bool,
}

/// One backfill job.
#[derive(Debug)]
pub struct Backfill {
    shared: Arc<Shared>,
    cfg: BackfillConfig,
    progress: Arc<Progress>,
}

/// What chunk tasks need (each chunk is its own tokio task, so JSON parsing spreads over the
/// runtime's workers).
#[derive(Debug)]
struct Shared {
    rpc: RpcClient,
    sources: Sources,
    catalog: Arc<EventCatalog>,
    chain_id: u64,
    sizer: RangeSizer,
}

struct Encoded {
    commit: ChunkCommit,
    logs: u64,
    rows: BTreeMap<String, u64>,
    bloom_refetches: u64,
}

impl Backfill {
    /// A job over `sources` on the chain `chain_id`.
    pub fn new(
        rpc: RpcClient,
        sources: Sources,
        chain_id: u64,
        cfg: BackfillConfig,
    ) -> tidewater_chain::Result<Self> {
        let catalog = Arc::new(EventCatalog::new(&sources)?);
        let sizer = RangeSizer::new(cfg.log_range, cfg.max_log_range);
        let shared = Arc::new(Shared { rpc, sources, catalog, chain_id, sizer });
        Ok(Self { shared, cfg, progress: Arc::default() })
    }

    /// Live counters.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Runs to completion or cancellation. Chunks are fetched out of order and committed in
    /// block order; cancellation is honoured between commits.
    pub async fn run(&self, writer: DatasetWriter, cancel: CancellationToken) -> Result<Summary> {
        self.run_with(writer, cancel).await.map(|(s, _)| s)
    }

    /// [`Backfill::run`], handing the writer back (for a tail that takes over).
    pub async fn run_with(
        &self,
        mut writer: DatasetWriter,
        cancel: CancellationToken,
    ) -> Result<(Summary, DatasetWriter)> {
        let started = Instant::now();
        let plan =
            plan_chunks(writer.manifest(), self.cfg.range, self.cfg.chunk_size, self.cfg.shard);
        let mut summary = Summary {
            range: (self.cfg.range.start, self.cfg.range.end),
            chunks_planned: plan.len() as u64,
            ..Summary::default()
        };
        self.progress.chunks_total.store(plan.len() as u64, Ordering::Relaxed);
        self.progress.blocks_total.store(plan.iter().map(BlockRange::len).sum(), Ordering::Relaxed);
        if plan.is_empty() {
            tracing::info!(range = %self.cfg.range, "nothing to do: the range is committed");
            summary.elapsed_secs = started.elapsed().as_secs_f64();
            return Ok((summary, writer));
        }
        let discovery = Instant::now();
        let pools =
            Arc::new(self.discover(plan.last().expect("invariant: plan not empty").end).await?);
        summary.pools = pools.len();
        summary.discovery_secs = discovery.elapsed().as_secs_f64();
        tracing::info!(chunks = plan.len(), pools = pools.len(), range = %self.cfg.range, "backfill planned");

        let mut encoded = stream::iter(plan)
            .map(|chunk| {
                let (shared, pools) = (self.shared.clone(), pools.clone());
                SpawnedTask::spawn(async move { shared.fetch_and_encode(chunk, pools).await })
                    .join()
            })
            .buffered(self.cfg.chunks_in_flight.max(1));
        while let Some(next) = encoded.next().await {
            let e = next?;
            let range = BlockRange::new(e.commit.start, e.commit.end);
            let (w, committed) = tokio::task::spawn_blocking(move || {
                let r = writer.commit(e.commit);
                (writer, r)
            })
            .await
            .map_err(Error::CommitTask)?;
            writer = w;
            committed.map_err(|source| Error::Storage { range, source })?;
            summary.chunks_committed += 1;
            summary.blocks += range.len();
            summary.logs += e.logs;
            summary.bloom_refetches += e.bloom_refetches;
            for (t, n) in e.rows {
                *summary.rows.entry(t).or_default() += n;
            }
            self.progress.chunks_done.fetch_add(1, Ordering::Relaxed);
            self.progress.blocks_done.fetch_add(range.len(), Ordering::Relaxed);
            self.progress.logs_done.fetch_add(e.logs, Ordering::Relaxed);
            tracing::debug!(%range, logs = e.logs, "chunk committed");
            if cancel.is_cancelled() {
                summary.cancelled = true;
                break;
            }
        }
        drop(encoded);
        summary.elapsed_secs = started.elapsed().as_secs_f64();
        Ok((summary, writer))
    }

    async fn discover(&self, up_to: u64) -> Result<PoolSet> {
        let sh = &self.shared;
        let Some(u) = &sh.sources.uniswap_v3 else { return Ok(PoolSet::default()) };
        let Some(range) = BlockRange::try_new(u.factory_start_block, up_to) else {
            return Ok(PoolSet::default());
        };
        discover_pools(&sh.rpc, u.factory, range, &sh.sizer)
            .await
            .map_err(|source| Error::Discover { range, source })
    }
}

impl Shared {
    async fn fetch_and_encode(&self, chunk: BlockRange, pools: Arc<PoolSet>) -> Result<Encoded> {
        let mut addresses = self.catalog.contracts();
        addresses.extend(pools.created_by(chunk.end));
        let filter = LogFilter { addresses, topic0s: vec![] };
        let data = self.fetch_consistent(&filter, chunk).await?;
        if let Some(u) = &self.sources.uniswap_v3 {
            // The chunk's own PoolCreated logs must agree with the discovery scan.
            let mut seen = PoolSet::default();
            seen.extend_from_logs(u.factory, &data.logs);
            if seen.created_by(chunk.end).iter().any(|p| !pools.is_pool_at(*p, chunk.end)) {
                return Err(Error::Fetch {
                    range: chunk,
                    source: tidewater_chain::Error::Inconsistent {
                        range: chunk,
                        what: "a PoolCreated log the discovery scan did not see".into(),
                    },
                });
            }
        }
        let catalog = self.catalog.clone();
        let chain_id = self.chain_id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let bloom_refetches = data.bloom_refetches;
            let r = encode_chunk(&catalog, &data, chain_id, &pools, chunk).map(|(commit, rows)| {
                Encoded { commit, logs: data.logs.len() as u64, rows, bloom_refetches }
            });
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| Error::EncoderGone { range: chunk })?
            .map_err(|source| Error::Storage { range: chunk, source })
    }

    async fn fetch_consistent(&self, filter: &LogFilter, chunk: BlockRange) -> Result<RangeData> {
        let mut attempt = 0;
        loop {
            match fetch_range(&self.rpc, filter, chunk, &self.sizer).await {
                Err(e @ tidewater_chain::Error::Inconsistent { .. })
                    if attempt < INCONSISTENT_RETRIES =>
                {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "inconsistent answers, refetching chunk");
                    let wait = tidewater_chain::backoff(
                        attempt,
                        tidewater_chain::DEFAULT_BACKOFF_BASE,
                        tidewater_chain::DEFAULT_BACKOFF_MAX,
                    );
                    tokio::time::sleep(wait).await;
                }
                other => return other.map_err(|source| Error::Fetch { range: chunk, source }),
            }
        }
    }
}
