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
pub use tidewater_chain::FilterMode;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;
use tidewater_chain::encode::SkippedLog;
use tidewater_chain::{
    discover_pools, discover_pools_checked, fetch_prefix, recheck_believed_empty, run_on_rayon,
    Address, BlockRange, Checks, EventCatalog, PoolSet, RangeSizer, RpcClient, Sources,
    SpawnedTask, DEFAULT_LOG_RANGE, DEFAULT_MAX_LOG_RANGE,
};
use tidewater_storage::{encode_chunk, ChunkCommit, DatasetWriter, Shard};
use tokio_util::sync::CancellationToken;

/// Chunks fetched or encoding at once. Four keeps the RPC semaphore busy while a chunk encodes
/// and bounds memory to four chunks' logs.
pub const DEFAULT_CHUNKS_IN_FLIGHT: usize = 4;
/// Watched logs a chunk aims to hold: a planned chunk denser than this is cut into pieces of
/// about this many logs (from the density of the chunk committed last), so memory is bounded
/// by logs in flight (chunks in flight × this), not by blocks, however dense the range. 50,000
/// logs are ~25 MB of decoded logs and well under a second of encoding.
pub const DEFAULT_CHUNK_LOGS: u64 = 50_000;
/// Until a first piece is committed the density is unknown: pieces are this fraction of a chunk.
const PROBE_FRACTION: u64 = 8;

/// Watched logs per 1,000 blocks of the piece committed last ([`u64::MAX`]: none yet).
#[derive(Debug)]
struct Density(AtomicU64);

impl Density {
    fn unknown() -> Self {
        Self(AtomicU64::new(u64::MAX))
    }

    fn observe(&self, range: BlockRange, logs: u64) {
        self.0.store(logs.saturating_mul(1_000) / range.len().max(1), Ordering::Relaxed);
    }

    /// Blocks of the next piece of `rest`: about `target_logs` at the last density, the whole
    /// rest when that leaves less than a quarter piece behind.
    fn next_piece(&self, rest: BlockRange, chunk_size: u64, target_logs: u64) -> u64 {
        let per_kblock = self.0.load(Ordering::Relaxed);
        let blocks = if per_kblock == u64::MAX {
            chunk_size / PROBE_FRACTION
        } else {
            target_logs.saturating_mul(1_000) / per_kblock.max(1)
        }
        .max(1);
        if rest.len() <= blocks.saturating_add(blocks / 4) {
            rest.len()
        } else {
            blocks
        }
    }
}
/// Blocks this close to the head are fetched with a header per block ([`Checks::Blocks`]);
/// older ones with a header per `eth_getLogs` answer ([`Checks::Spans`]). Lagging nodes behind
/// load balancers miss blocks near the head, not blocks hours old.
pub const DEFAULT_BLOCK_CHECKS_DEPTH: u64 = 1_024;
/// Undecodable logs listed by name in a summary; the rest are only counted.
const SKIPPED_LISTED: usize = 100;

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
    /// Watched logs a chunk aims to hold ([`DEFAULT_CHUNK_LOGS`]).
    pub chunk_logs: u64,
    /// Logs an `eth_getLogs` answer aims at ([`tidewater_chain::DEFAULT_ANSWER_LOGS`]; a
    /// node on this machine serves smaller ones faster: [`tidewater_chain::LOCAL_ANSWER_LOGS`]).
    pub answer_logs: u64,
    /// How the factory's pools are asked for.
    pub filter_mode: FilterMode,
    /// Chunks ending before this block are checked with [`Checks::Spans`], the others with
    /// [`Checks::Blocks`] (the caller sets it from the head and a depth, e.g.
    /// [`DEFAULT_BLOCK_CHECKS_DEPTH`]; 0 checks every block).
    pub spans_below: u64,
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
            chunk_logs: DEFAULT_CHUNK_LOGS,
            answer_logs: tidewater_chain::DEFAULT_ANSWER_LOGS as u64,
            filter_mode: FilterMode::Auto,
            spans_below: 0,
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
    /// Blocks whose logs were recovered because their bloom contradicted an empty answer.
    pub bloom_refetches: u64,
    /// Chunks fetched again because a pool the discovery scan had missed turned up.
    pub pool_refetches: u64,
    /// Committed chunks fetched again and replaced at the end of the run: a provider caught
    /// hiding logs had hidden some of theirs too.
    pub hidden_refetches: u64,
    /// Logs kept in `logs` but left out of their decoded table: they do not decode under
    /// their event's signature.
    pub undecodable_logs: u64,
    /// The first of them (block, log index, table, reason).
    pub undecodable: Vec<SkippedLog>,
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
    filter_mode: FilterMode,
    spans_below: u64,
    /// The fixed contracts, sorted.
    contracts: Vec<Address>,
}

struct Encoded {
    range: BlockRange,
    commit: ChunkCommit,
    logs: u64,
    rows: BTreeMap<String, u64>,
    bloom_refetches: u64,
    skipped: Vec<SkippedLog>,
    /// Pools created by the chunk's end that its filter held.
    pools_used: usize,
}

/// The factory's pools, shared by chunk tasks: a chunk that finds a pool the discovery scan
/// missed adds it here.
type SharedPools = Arc<RwLock<PoolSet>>;

fn read_pools(p: &SharedPools) -> PoolSet {
    p.read().unwrap_or_else(PoisonError::into_inner).clone()
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
        let sizer = RangeSizer::new(cfg.log_range, cfg.max_log_range)
            .with_answer_logs(usize::try_from(cfg.answer_logs).unwrap_or(usize::MAX))
            .with_horizon(cfg.range.end)
            // Logs seen in one range's answers are asked for again over another range only
            // deep below the head, whatever the checks (a lagging log index answers `[]` near
            // the head however often it is asked: there the checks by block decide).
            .with_settled_below(
                cfg.spans_below.min(cfg.range.end.saturating_sub(DEFAULT_BLOCK_CHECKS_DEPTH)),
            );
        let shared = Arc::new(Shared {
            rpc,
            sources,
            contracts: catalog.contracts(),
            catalog,
            chain_id,
            sizer,
            filter_mode: cfg.filter_mode,
            spans_below: cfg.spans_below,
        });
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
        let pools: SharedPools = Arc::new(RwLock::new(self.discover(&plan).await?));
        summary.discovery_secs = discovery.elapsed().as_secs_f64();
        let known = read_pools(&pools).len();
        tracing::info!(chunks = plan.len(), pools = known, range = %self.cfg.range, "backfill planned");

        // Each planned chunk is cut, piece by piece as the pipeline asks for the next one,
        // to about `chunk_logs` at the density seen last.
        let density = Arc::new(Density::unknown());
        let pieces = {
            let (density, progress) = (density.clone(), self.progress.clone());
            let (size, logs) = (self.cfg.chunk_size.max(1), self.cfg.chunk_logs.max(1));
            stream::iter(plan).flat_map(move |chunk| {
                let (density, progress) = (density.clone(), progress.clone());
                let mut rest = Some(chunk);
                stream::iter(std::iter::from_fn(move || {
                    let r = rest?;
                    let (piece, tail) = r.split_at_len(density.next_piece(r, size, logs));
                    if tail.is_some() {
                        progress.chunks_total.fetch_add(1, Ordering::Relaxed);
                    }
                    rest = tail;
                    Some(piece)
                }))
            })
        };
        // A piece holds about `chunk_logs` logs; one whose density estimate proved wrong is
        // fetched up to a quarter more, and the rest of it after it (see `fetch_checked`).
        let max_logs = self.cfg.chunk_logs.max(1).saturating_add(self.cfg.chunk_logs / 4);
        let mut encoded = pieces
            .map(|chunk| {
                let (shared, pools) = (self.shared.clone(), pools.clone());
                async move {
                    let e = SpawnedTask::spawn(async move {
                        shared.fetch_and_encode(chunk, &pools, max_logs).await
                    })
                    .join()
                    .await
                    .map_err(|source| Error::TaskPanicked { range: chunk, source })??;
                    Ok::<_, Error>((chunk.end, e))
                }
            })
            .buffered(self.cfg.chunks_in_flight.max(1));
        // Each piece, then what is left of it (fetched one after the other: only where a piece
        // was cut short).
        let mut left: Option<(u64, Encoded)> = None;
        let mut committed_ranges: Vec<BlockRange> = Vec::new();
        loop {
            let (piece_end, mut e) = match left.take() {
                Some(l) => l,
                None => match encoded.next().await {
                    Some(next) => next?,
                    None => break,
                },
            };
            let mut range = e.range;
            // Chunks commit in block order, so every chunk before this one has added the pools
            // it found. A chunk fetched before such a pool was known misses its logs: refetch.
            while read_pools(&pools).count_created_by(range.end) > e.pools_used {
                tracing::warn!(%range, "a pool found by an earlier chunk was not in this chunk's filter; refetching");
                summary.pool_refetches += 1;
                e = self.shared.fetch_and_encode(range, &pools, max_logs).await?;
                range = e.range;
            }
            let commit = e.commit;
            writer = write_blocking(writer, range, move |w| w.commit(commit)).await?;
            committed_ranges.push(range);
            density.observe(range, e.logs);
            summary.chunks_committed += 1;
            summary.blocks += range.len();
            summary.logs += e.logs;
            summary.bloom_refetches += e.bloom_refetches;
            summary.undecodable_logs += e.skipped.len() as u64;
            let room = SKIPPED_LISTED.saturating_sub(summary.undecodable.len());
            summary.undecodable.extend(e.skipped.into_iter().take(room));
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
            if range.end < piece_end {
                let rest = BlockRange::new(range.end + 1, piece_end);
                tracing::debug!(%rest, "a piece denser than estimated was cut short; fetching its rest");
                self.progress.chunks_total.fetch_add(1, Ordering::Relaxed);
                left =
                    Some((piece_end, self.shared.fetch_and_encode(rest, &pools, max_logs).await?));
            }
        }
        drop(encoded);
        if !summary.cancelled {
            writer = self.refetch_hidden(writer, &committed_ranges, &pools, &mut summary).await?;
        }
        // Pieces of planned chunks count as planned chunks.
        summary.chunks_planned =
            summary.chunks_planned.max(self.progress.chunks_total.load(Ordering::Relaxed));
        summary.pools = read_pools(&pools).len();
        if summary.undecodable_logs > 0 {
            tracing::warn!(
                logs = summary.undecodable_logs,
                "logs did not decode under their event signature; they are in the logs table only"
            );
        }
        summary.elapsed_secs = started.elapsed().as_secs_f64();
        Ok((summary, writer))
    }

    /// Once a provider was seen hiding logs, the runs of `[]` believed after plain questions are
    /// asked again ([`recheck_believed_empty`]); the chunks of `committed` holding watched logs
    /// found there are fetched again and replace the ones committed. A refetch that does not hold
    /// more logs by those is an error, not a chunk replaced.
    async fn refetch_hidden(
        &self,
        mut writer: DatasetWriter,
        committed: &[BlockRange],
        pools: &SharedPools,
        summary: &mut Summary,
    ) -> Result<DatasetWriter> {
        let sh = &self.shared;
        let mut found = recheck_believed_empty(&sh.rpc, &sh.sizer)
            .await
            .map_err(|source| Error::Fetch { range: self.cfg.range, source })?;
        // Logs of contracts not watched (asked by selector from any contract) are no loss.
        read_pools(pools).retain_watched(&mut found, &sh.contracts);
        let mut chunks: Vec<(BlockRange, u64)> = Vec::new();
        for l in &found {
            let Some(c) = committed.iter().find(|c| c.contains(l.block_number)) else { continue };
            match chunks.last_mut() {
                Some((last, n)) if last == c => *n += 1,
                _ => chunks.push((*c, 1)),
            }
        }
        if chunks.is_empty() {
            return Ok(writer);
        }
        let known = read_pools(pools);
        let replaced: Vec<BlockRange> = chunks.iter().map(|(c, _)| *c).collect();
        writer = self.replace_chunks(writer, chunks, pools, summary).await?;
        // A hidden `PoolCreated` log: the later chunks were fetched without that pool.
        let now = read_pools(pools);
        let missed: Vec<(BlockRange, u64)> = committed
            .iter()
            .filter(|c| now.count_created_by(c.end) > known.count_created_by(c.end))
            .filter(|c| !replaced.contains(c))
            .map(|c| (*c, 0))
            .collect();
        if !missed.is_empty() {
            tracing::warn!(
                chunks = missed.len(),
                "pools found in hidden logs: fetching the chunks after them again"
            );
            writer = self.replace_chunks(writer, missed, pools, summary).await?;
        }
        Ok(writer)
    }

    /// Fetches each of `chunks` (committed, with the number of logs found hidden in it) again,
    /// with backoff while it holds no more logs than committed plus those, and replaces it.
    async fn replace_chunks(
        &self,
        mut writer: DatasetWriter,
        chunks: Vec<(BlockRange, u64)>,
        pools: &SharedPools,
        summary: &mut Summary,
    ) -> Result<DatasetWriter> {
        let sh = &self.shared;
        for (range, hidden) in chunks {
            let old: BTreeMap<String, u64> = writer
                .manifest()
                .chunks()
                .iter()
                .find(|c| c.start == range.start && c.end == range.end)
                .map(|c| c.tables.iter().map(|(t, f)| (t.clone(), f.rows)).collect())
                .unwrap_or_default();
            let before = old.get("logs").copied().unwrap_or(0);
            tracing::warn!(%range, hidden, "fetching a committed chunk again: answers hid logs of it");
            // The provider that hid them may hide them again: fetched until they are in, with
            // backoff, a few times.
            let mut attempt = 0;
            let e = loop {
                let e = sh.fetch_and_encode(range, pools, u64::MAX).await?;
                if e.range == range && e.logs >= before.saturating_add(hidden) {
                    break e;
                }
                if attempt >= tidewater_chain::INCONSISTENT_RETRIES {
                    return Err(Error::Fetch {
                        range,
                        source: tidewater_chain::Error::Inconsistent {
                            range,
                            what: format!(
                                "fetched again, {} logs in {} where {before} were committed and {hidden} found hidden",
                                e.logs, e.range
                            ),
                        },
                    });
                }
                attempt += 1;
                tracing::warn!(%range, attempt, logs = e.logs, "the chunk fetched again still lacks the hidden logs; again");
                tokio::time::sleep(tidewater_chain::backoff(
                    attempt,
                    tidewater_chain::DEFAULT_BACKOFF_BASE,
                    tidewater_chain::DEFAULT_BACKOFF_MAX,
                ))
                .await;
            };
            let commit = e.commit;
            writer = write_blocking(writer, range, move |w| w.replace(commit)).await?;
            summary.hidden_refetches += 1;
            summary.logs += e.logs - before;
            for (t, n) in e.rows {
                let was = old.get(&t).copied().unwrap_or(0);
                let rows = summary.rows.entry(t).or_default();
                *rows = rows.saturating_sub(was).saturating_add(n);
            }
        }
        Ok(writer)
    }

    /// The factory's pools up to the plan's end. Where this run's chunks will fetch the blocks,
    /// each chunk checks its own `PoolCreated` logs, so a quick scan is enough there; the rest
    /// (before `--from`, committed chunks, other shards' chunks) is scanned with the
    /// completeness checks of a range fetch.
    async fn discover(&self, plan: &[BlockRange]) -> Result<PoolSet> {
        let sh = &self.shared;
        let Some(u) = &sh.sources.uniswap_v3 else { return Ok(PoolSet::default()) };
        let Some(up_to) = plan.last().map(|c| c.end) else { return Ok(PoolSet::default()) };
        let Some(all) = BlockRange::try_new(u.factory_start_block, up_to) else {
            return Ok(PoolSet::default());
        };
        let (planned, unplanned) = split_by_plan(all, plan);
        let mut set = PoolSet::default();
        for range in planned {
            let found = discover_pools(&sh.rpc, u.factory, range, &sh.sizer)
                .await
                .map_err(|source| Error::Discover { range, source })?;
            set.merge(&found);
        }
        for range in unplanned {
            let checks = sh.checks_for(range);
            let found = discover_pools_checked(&sh.rpc, u.factory, range, &sh.sizer, checks)
                .await
                .map_err(|source| Error::Discover { range, source })?;
            set.merge(&found);
        }
        Ok(set)
    }
}

/// Runs `f` (a commit, or a replacement, of `range`) on the writer on the blocking pool (fsync,
/// rename), handing the writer back.
async fn write_blocking<T: Send + 'static>(
    mut writer: DatasetWriter,
    range: BlockRange,
    f: impl FnOnce(&mut DatasetWriter) -> tidewater_storage::Result<T> + Send + 'static,
) -> Result<DatasetWriter> {
    let (writer, r) = tokio::task::spawn_blocking(move || {
        let r = f(&mut writer);
        (writer, r)
    })
    .await
    .map_err(Error::CommitTask)?;
    r.map_err(|source| Error::Storage { range, source })?;
    Ok(writer)
}

/// `all` cut into the spans the plan covers and the spans it does not, each merged.
fn split_by_plan(all: BlockRange, plan: &[BlockRange]) -> (Vec<BlockRange>, Vec<BlockRange>) {
    let mut covered: Vec<BlockRange> = Vec::new();
    for c in plan.iter().filter_map(|c| c.intersect(&all)) {
        match covered.last_mut() {
            Some(last) if last.end + 1 >= c.start => last.end = last.end.max(c.end),
            _ => covered.push(c),
        }
    }
    let mut gaps = Vec::new();
    let mut next = all.start;
    for c in &covered {
        if let Some(g) =
            BlockRange::try_new(next, c.start.saturating_sub(1)).filter(|_| c.start > next)
        {
            gaps.push(g);
        }
        next = c.end + 1;
    }
    if let Some(g) = BlockRange::try_new(next, all.end) {
        gaps.push(g);
    }
    (covered, gaps)
}

impl Shared {
    /// `chunk`'s logs and headers: the part before `spans_below` with [`Checks::Spans`], the
    /// rest with [`Checks::Blocks`].
    ///
    /// A chunk is fetched until about `max_logs` logs are in: the prefix covered comes back
    /// with its data, and the caller fetches the rest next. A chunk cut by a density estimate
    /// that proved wrong (a dense stretch right after an empty one) then holds about as many
    /// logs as planned instead of hundreds of thousands.
    async fn fetch_checked(
        &self,
        filter: &tidewater_chain::LogFilter,
        chunk: BlockRange,
        max_logs: u64,
    ) -> tidewater_chain::Result<(BlockRange, tidewater_chain::RangeData)> {
        let prefix = |r: BlockRange| {
            fetch_prefix(&self.rpc, filter, r, &self.sizer, self.checks_for(r), max_logs)
        };
        if chunk.start >= self.spans_below || chunk.end < self.spans_below {
            return prefix(chunk).await;
        }
        // Across the line: the part checked by spans, then (when it was not cut short) the
        // part checked block by block.
        let (old, new) = chunk.split_at_len(self.spans_below - chunk.start);
        let (covered, mut a) = prefix(old).await?;
        let Some(new) = new.filter(|_| covered.end == old.end) else { return Ok((covered, a)) };
        let (covered, b) = prefix(new).await?;
        a.headers.extend(b.headers);
        a.blocks.extend(b.blocks);
        a.logs.extend(b.logs);
        a.bloom_refetches += b.bloom_refetches;
        Ok((BlockRange::new(chunk.start, covered.end), a))
    }

    fn checks_for(&self, range: BlockRange) -> Checks {
        if range.end < self.spans_below && !self.sizer.caught_hiding() {
            Checks::Spans
        } else {
            Checks::Blocks
        }
    }

    /// Fetches and encodes `chunk`. When the chunk holds a `PoolCreated` log of a pool not yet
    /// known, the pool is added to `pools` and the chunk is fetched again with it.
    ///
    /// Only a prefix of `chunk` may be done (see [`Shared::fetch_checked`]): the answer's
    /// `range` says which.
    async fn fetch_and_encode(
        &self,
        chunk: BlockRange,
        pools: &SharedPools,
        max_logs: u64,
    ) -> Result<Encoded> {
        loop {
            let known = read_pools(pools);
            let filter = self.filter_mode.filter(
                self.contracts.clone(),
                known.created_by(chunk.end),
                self.catalog.pool_topic0s(),
            );
            let (chunk, mut data) = self
                .fetch_checked(&filter, chunk, max_logs)
                .await
                .map_err(|source| Error::Fetch { range: chunk, source })?;
            if let Some(u) = &self.sources.uniswap_v3 {
                let mut seen = PoolSet::default();
                seen.extend_from_logs(u.factory, &data.logs);
                let missed = seen.missing_from(&known, chunk.end);
                if !missed.is_empty() {
                    tracing::warn!(
                        %chunk, pools = ?missed,
                        "the chunk holds PoolCreated logs the discovery scan did not return; refetching with them"
                    );
                    pools.write().unwrap_or_else(PoisonError::into_inner).merge(&seen);
                    continue;
                }
            }
            if !filter.open_topic0s.is_empty() {
                // Asked by selector from any contract: keep the watched emitters only. A
                // contract the factory did not create never reaches a table.
                known.retain_watched(&mut data.logs, &self.contracts);
                let with_logs: std::collections::HashSet<u64> =
                    data.logs.iter().map(|l| l.block_number).collect();
                data.blocks.retain(|b| b.parent_hash.is_some() || with_logs.contains(&b.number));
            }
            let pools_used = known.count_created_by(chunk.end);
            let catalog = self.catalog.clone();
            let chain_id = self.chain_id;
            let bloom_refetches = data.bloom_refetches;
            let logs = data.logs.len() as u64;
            let encoded =
                run_on_rayon(move || encode_chunk(&catalog, &data, chain_id, &known, chunk))
                    .await
                    .map_err(|source| Error::TaskPanicked { range: chunk, source })?
                    .map_err(|source| Error::Storage { range: chunk, source })?;
            return Ok(Encoded {
                range: chunk,
                commit: encoded.commit,
                logs,
                rows: encoded.rows,
                bloom_refetches,
                skipped: encoded.skipped,
                pools_used,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Pieces cut from a chunk tile it exactly, and once the density is known no piece is
        /// (much) over the log target unless one block alone is.
        #[test]
        fn pieces_tile_the_chunk_and_hold_about_the_target(
            start in 0u64..1_000_000, len in 1u64..5_000, size in 1u64..2_000,
            target in 1u64..100_000, densities in proptest::collection::vec(0u64..2_000, 1..20),
        ) {
            let d = Density::unknown();
            let chunk = BlockRange::new(start, start + len - 1);
            let (mut rest, mut next, mut i) = (Some(chunk), start, 0);
            while let Some(r) = rest {
                let known = d.0.load(Ordering::Relaxed) != u64::MAX;
                let (piece, tail) = r.split_at_len(d.next_piece(r, size, target));
                proptest::prop_assert_eq!(piece.start, next);
                next = piece.end + 1;
                let per_block = densities[i % densities.len()];
                if known && piece.len() > 1 && tail.is_some() {
                    proptest::prop_assert!(
                        piece.len() * d.0.load(Ordering::Relaxed) <= target * 1_000 * 5 / 4 + 1_000,
                        "piece {piece:?} over the target"
                    );
                }
                d.observe(piece, per_block * piece.len());
                rest = tail;
                i += 1;
            }
            proptest::prop_assert_eq!(next, chunk.end + 1);
        }
    }

    #[test]
    fn a_dense_chunk_is_cut_and_a_sparse_one_is_not() {
        let d = Density::unknown();
        let chunk = BlockRange::new(0, 499);
        assert_eq!(d.next_piece(chunk, 500, 50_000), 500 / PROBE_FRACTION, "unknown: a probe");
        d.observe(BlockRange::new(0, 61), 62 * 300);
        assert_eq!(d.next_piece(chunk, 500, 50_000), 166, "300 logs a block: ~50,000 a piece");
        d.observe(BlockRange::new(0, 99), 100 * 10);
        assert_eq!(d.next_piece(chunk, 500, 50_000), 500, "10 logs a block: the whole chunk");
    }

    #[test]
    fn plan_splits_the_discovery_range() {
        let r = |a, b| BlockRange::new(a, b);
        let plan = [r(100, 199), r(200, 299), r(500, 599)];
        let (covered, gaps) = split_by_plan(r(0, 599), &plan);
        assert_eq!(covered, vec![r(100, 299), r(500, 599)]);
        assert_eq!(gaps, vec![r(0, 99), r(300, 499)]);
        let (covered, gaps) = split_by_plan(r(150, 599), &plan);
        assert_eq!(covered, vec![r(150, 299), r(500, 599)]);
        assert_eq!(gaps, vec![r(300, 499)]);
        let (covered, gaps) = split_by_plan(r(0, 50), &plan);
        assert!(covered.is_empty());
        assert_eq!(gaps, vec![r(0, 50)]);
    }
}
