//! # tidewater-tail
//!
//! Owns the chain head: follows new blocks (WebSocket `newHeads` when given, HTTP polling
//! always as the fallback), keeps unconfirmed blocks in a
//! [`HotBuffer`], detects reorgs by parent hash and rolls the buffer back to the common
//! ancestor, compacts blocks at or below the confirmed watermark into the cold Parquet tables,
//! and publishes every change on a bus as [`ChainUpdate`]s. It does not own historical ranges.
//!
//! ```text
//!   node ──poll──▶ header n+1 ──parent == tip?──yes──▶ logs by block hash ──▶ HotBuffer ─▶ Applied
//!                               │ no
//!                               ▼
//!                  pop tips until the node's hash at the tip's height matches ─▶ Reverted (newest first)
//!                  (buffer empty and the checkpoint is no longer canonical: deep reorg,
//!                   roll cold chunks back to the common ancestor)
//!
//!   HotBuffer blocks <= watermark ──encode (rayon)──▶ DatasetWriter::commit ─▶ Confirmed
//!   (watermark: the node's `finalized` block, or head - confirmations)
//! ```
//!
//! [`Tail::follow`] runs the same loop for a standby (`run --ha`) without a writer: blocks leave
//! its hot buffer as confirmed once the leader has committed them, and the leader's rollbacks
//! are reverted.
//!
//! Invariants: only blocks at or below the watermark reach Parquet; the checkpoint is the last
//! manifest entry (committed atomically with its files), so a restart after `kill -9` resumes
//! from it, re-verifies its hash against the node, and refetches the unconfirmed window.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod heads;
mod hot;

pub use hot::{ChainUpdate, HotBlock, HotBuffer, NotLinked};

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewater_chain::metrics::{Histogram, DELAY_BUCKETS, DEPTH_BUCKETS};
use tidewater_chain::{
    discover_pools_checked, BlockRange, BloomSays, Checks, EventCatalog, Header, Log, LogFilter,
    PoolSet, RangeData, RangeSizer, RpcClient, Sources, B256, DEFAULT_LOG_RANGE,
    DEFAULT_MAX_LOG_RANGE,
};
use tidewater_storage::{encode_chunk, DatasetWriter};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Updates buffered for slow bus subscribers before they lag (and must resync).
pub const BUS_CAPACITY: usize = 4096;
/// How often the node is polled for a new head. 250 ms keeps a 1-second chain's latency low
/// without loading the node.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Confirmations when the node has no `finalized` block: 64 blocks, two Ethereum epochs.
pub const DEFAULT_CONFIRMATIONS: u64 = 64;
/// Confirmed blocks gathered before a compaction commit (one Parquet file per table).
pub const DEFAULT_COMPACT_BLOCKS: u64 = 100;
/// Cold chunks are merged per this many blocks, matching the backfill's default chunk size so
/// the cold tier has one file per table per 500 blocks however it was written.
pub const DEFAULT_MERGE_BLOCKS: u64 = 500;
/// Longest a confirmed block waits in the hot buffer before it is compacted anyway.
pub const DEFAULT_COMPACT_INTERVAL: Duration = Duration::from_secs(30);

/// A follower ([`Tail::follow`]) reads the leader's commits at most this often.
pub const FOLLOW_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Headers of confirmed blocks a follower keeps, to revert them if the leader rolls back.
const FOLLOW_RECENT: usize = 4096;

/// Deferred empty answers ([`EmptyChecks`]) are checked with one ranged request across the
/// blocks between two of them while those hold at most this many logs (fetched again).
const RECHECK_GAP_LOGS: usize = 2_000;

/// The fewest blocks a round of the tail applies before it compacts ([`Tail::catch_up_batch`]).
const MIN_CATCH_UP_BATCH: u64 = 256;

/// Longest wait between polls while the node is unavailable.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the tail stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Talking to the node failed beyond retries.
    #[error("following the head")]
    Chain(#[from] tidewater_chain::Error),
    /// Writing the cold tier failed.
    #[error("writing confirmed blocks")]
    Storage(#[from] tidewater_storage::Error),
    /// A blocking task died.
    #[error("a storage task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The encoder panicked (a bug; the message says where).
    #[error("the encoder of blocks {range} failed")]
    EncoderPanicked {
        /// Blocks being encoded.
        range: BlockRange,
        /// The panic.
        #[source]
        source: tidewater_chain::Panicked,
    },
    /// A commit panicked while holding the writer: the writer's in-memory state is not trusted.
    #[error("the dataset writer was poisoned by an earlier failure; restart to reopen it")]
    WriterPoisoned,
}

fn lock_writer(w: &Mutex<DatasetWriter>) -> Result<std::sync::MutexGuard<'_, DatasetWriter>> {
    w.lock().map_err(|_| Error::WriterPoisoned)
}

/// How the watermark is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Finality {
    /// The node's `finalized` block, falling back to depth when the node has none.
    Finalized(u64),
    /// head minus this many blocks.
    Depth(u64),
}

/// Tail settings.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Poll interval.
    pub poll_interval: Duration,
    /// Watermark rule.
    pub finality: Finality,
    /// Confirmed blocks per compaction commit.
    pub compact_blocks: u64,
    /// Longest wait before compacting confirmed blocks anyway.
    pub compact_interval: Duration,
    /// First block when the dataset is empty.
    pub start_block: u64,
    /// Blocks per merged cold chunk.
    pub merge_blocks: u64,
    /// WebSocket URL for `newHeads` notifications; polling only when absent.
    pub ws: Option<tidewater_chain::ProviderUrl>,
    /// How the factory's pools are asked for.
    pub filter_mode: tidewater_chain::FilterMode,
    /// When an empty answer for a block whose bloom may match is asked again.
    pub empty_checks: EmptyChecks,
}

/// When an empty by-hash answer for a block whose bloom may hold a watched log is checked
/// (a lagging node answers `[]` for blocks it has not indexed yet). See
/// `docs/design/mainnet-shape.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyChecks {
    /// At once when the bloom's "maybe" is likely real, at compaction when the bloom is so
    /// full that it says "maybe" by chance ([`tidewater_chain::BloomSays`]). (`tidewater run`
    /// and `tail` check at once when a live state folds the hot blocks.)
    #[default]
    Auto,
    /// At once, always: the block is asked again by hash, then its receipts decide (up to two
    /// requests per such block, one of them `eth_getBlockReceipts`).
    AtOnce,
    /// At compaction, always: one ranged `eth_getLogs` per run of such blocks; a block found to
    /// have missed logs is reverted and applied again with them.
    Deferred,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            finality: Finality::Finalized(DEFAULT_CONFIRMATIONS),
            compact_blocks: DEFAULT_COMPACT_BLOCKS,
            compact_interval: DEFAULT_COMPACT_INTERVAL,
            start_block: 0,
            merge_blocks: DEFAULT_MERGE_BLOCKS,
            ws: None,
            filter_mode: tidewater_chain::FilterMode::Auto,
            empty_checks: EmptyChecks::Auto,
        }
    }
}

/// Live counters (for `status` and metrics).
#[derive(Debug)]
pub struct TailStats {
    /// Latest head seen.
    pub head: AtomicU64,
    /// Current watermark.
    pub watermark: AtomicU64,
    /// Last block committed to the cold tier.
    pub checkpoint: AtomicU64,
    /// Reorgs handled.
    pub reorgs: AtomicU64,
    /// Deepest reorg, in blocks.
    pub max_reorg_depth: AtomicU64,
    /// The last deep reorg: the checkpoint it invalidated (0 before any).
    pub last_deep_reorg_checkpoint: AtomicU64,
    /// The last deep reorg: cold blocks it rolled back.
    pub last_deep_reorg_blocks: AtomicU64,
    /// The last deep reorg: when (unix seconds).
    pub last_deep_reorg_time: AtomicU64,
    /// Reorgs deeper than the watermark (cold data rolled back).
    pub deep_reorgs: AtomicU64,
    /// Blocks applied.
    pub blocks_applied: AtomicU64,
    /// Blocks in the hot buffer (detected, not yet persisted).
    pub hot_blocks: AtomicU64,
    /// Timestamp of the newest block applied (unix seconds).
    pub tip_timestamp: AtomicU64,
    /// The newest block applied (hot tip, else the checkpoint).
    pub tip: AtomicU64,
    /// The last `finalized` block the node reported (0 before the first answer).
    pub finalized: AtomicU64,
    /// Whether the last `finalized` call failed, so the watermark holds at the last known one.
    pub finalized_stale: std::sync::atomic::AtomicBool,
    /// `finalized` calls that failed.
    pub finalized_errors: AtomicU64,
    /// Whether the tail has reached the head at least once since it started.
    pub caught_up: std::sync::atomic::AtomicBool,
    /// Block timestamp to detected (header and logs in the hot buffer), seconds.
    pub detect_delay: Histogram,
    /// Block timestamp to persisted (committed to the cold tier), seconds.
    pub persist_delay: Histogram,
    /// Depth of each reorg handled, in blocks.
    pub reorg_depth: Histogram,
    /// Later stages observed by other parts of the process (the live state, the publisher),
    /// encoded in the same `tidewater_stage_delay_seconds` family.
    pub later_stages: std::sync::OnceLock<Vec<(String, Arc<Histogram>)>>,
    /// Why the cold tier cannot be written right now (the object store or its coordinator is
    /// unreachable); `None` while commits go through. The tail retries with backoff.
    pub store_unavailable: std::sync::Mutex<Option<String>>,
    /// Commits that failed for a transient store error (and were retried).
    pub store_errors: AtomicU64,
    /// Blocks whose empty answer was left to the check at compaction ([`EmptyChecks`]).
    pub empty_deferred: AtomicU64,
    /// Blocks the check at compaction found short of logs (reverted and applied again).
    pub blocks_repaired: AtomicU64,
    /// Runs of deferred blocks the check at compaction asked block by block: no log of that
    /// part held on either side, and a ranged answer of `[]`.
    pub empty_unanchored: AtomicU64,
}

impl Default for TailStats {
    fn default() -> Self {
        Self {
            head: AtomicU64::new(0),
            watermark: AtomicU64::new(0),
            checkpoint: AtomicU64::new(0),
            reorgs: AtomicU64::new(0),
            max_reorg_depth: AtomicU64::new(0),
            last_deep_reorg_checkpoint: AtomicU64::new(0),
            last_deep_reorg_blocks: AtomicU64::new(0),
            last_deep_reorg_time: AtomicU64::new(0),
            deep_reorgs: AtomicU64::new(0),
            blocks_applied: AtomicU64::new(0),
            hot_blocks: AtomicU64::new(0),
            tip_timestamp: AtomicU64::new(0),
            tip: AtomicU64::new(0),
            finalized: AtomicU64::new(0),
            finalized_stale: Default::default(),
            finalized_errors: AtomicU64::new(0),
            caught_up: Default::default(),
            store_unavailable: Default::default(),
            store_errors: AtomicU64::new(0),
            empty_deferred: AtomicU64::new(0),
            blocks_repaired: AtomicU64::new(0),
            empty_unanchored: AtomicU64::new(0),
            detect_delay: Histogram::new(DELAY_BUCKETS),
            persist_delay: Histogram::new(DELAY_BUCKETS),
            reorg_depth: Histogram::new(DEPTH_BUCKETS),
            later_stages: std::sync::OnceLock::new(),
        }
    }
}

impl TailStats {
    /// A deep reorg invalidated `checkpoint` and rolled `blocks` cold blocks back.
    fn record_deep_reorg(&self, checkpoint: u64, blocks: u64) {
        self.deep_reorgs.fetch_add(1, Ordering::Relaxed);
        self.last_deep_reorg_checkpoint.store(checkpoint, Ordering::Relaxed);
        self.last_deep_reorg_blocks.store(blocks, Ordering::Relaxed);
        self.last_deep_reorg_time.store(unix_now() as u64, Ordering::Relaxed);
    }
}

/// One range [`Tail::recheck`] asks for one part of the filter: indexes into the consecutive
/// hot blocks, and which ends are anchors (blocks holding logs of the part, which an honest
/// answer must hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecheckRun {
    lo: usize,
    hi: usize,
    /// `lo` holds logs of the part: an answer that is `[]` as a whole is caught.
    before: bool,
    /// `hi` holds logs of the part: an answer cut short by a lagging index is caught.
    after: bool,
}

/// The ranges [`Tail::recheck`] asks for one part of the filter: runs of deferred blocks
/// (`due`, numbers of blocks among the consecutive `blocks`), merged while the blocks between
/// hold at most [`RECHECK_GAP_LOGS`] logs of the part, each reaching to the nearest blocks
/// holding logs of it on either side.
fn recheck_runs(blocks: &[Arc<HotBlock>], due: &[u64], part: &LogFilter) -> Vec<RecheckRun> {
    let Some(first) = blocks.first().map(|b| b.header.number) else { return Vec::new() };
    let held = |b: &HotBlock| b.logs.iter().filter(|l| part.matches(l)).count();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in due.iter().filter_map(|n| n.checked_sub(first)).map(|i| i as usize) {
        if i >= blocks.len() {
            continue;
        }
        match runs.last_mut() {
            // `due` is sorted and distinct; anything else is covered by the run already.
            Some((_, end)) if i <= *end => {}
            Some((_, end))
                if blocks
                    .get(*end + 1..i)
                    .unwrap_or_default()
                    .iter()
                    .map(|b| held(b))
                    .sum::<usize>()
                    <= RECHECK_GAP_LOGS =>
            {
                *end = i
            }
            _ => runs.push((i, i)),
        }
    }
    runs.into_iter()
        .map(|(a, b)| {
            let before = blocks.get(..a).unwrap_or_default().iter().rposition(|x| held(x) > 0);
            let after = blocks
                .get(b + 1..)
                .unwrap_or_default()
                .iter()
                .position(|x| held(x) > 0)
                .map(|k| b + 1 + k);
            RecheckRun {
                lo: before.unwrap_or(a),
                hi: after.unwrap_or(b),
                before: before.is_some(),
                after: after.is_some(),
            }
        })
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Head, watermark, lag, backlog, reorgs and the delay of each stage.
impl tidewater_chain::metrics::Collector for TailStats {
    fn encode(
        &self,
        mut enc: tidewater_chain::metrics::DescriptorEncoder<'_>,
    ) -> tidewater_chain::metrics::Result {
        use tidewater_chain::metrics::{counter, gauge, Histogram};
        let e = &mut enc;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicU64| n(a) as f64;
        let head = g(&self.head);
        let tip = g(&self.tip);
        gauge(e, "tidewater_head_block", "Latest head block seen on the node.", head)?;
        gauge(
            e,
            "tidewater_watermark_block",
            "Confirmed watermark (finalized, or head - confirmations).",
            g(&self.watermark),
        )?;
        gauge(
            e,
            "tidewater_checkpoint_block",
            "Last block persisted to the cold tier.",
            g(&self.checkpoint),
        )?;
        gauge(
            e,
            "tidewater_lag_blocks",
            "Head minus the newest block in the hot buffer.",
            (head - tip).max(0.0),
        )?;
        let ts = g(&self.tip_timestamp);
        gauge(
            e,
            "tidewater_lag_seconds",
            "Now minus the timestamp of the newest block applied.",
            if ts > 0.0 { (unix_now() - ts).max(0.0) } else { 0.0 },
        )?;
        gauge(
            e,
            "tidewater_backlog_blocks",
            "Blocks detected but not yet persisted (hot buffer) plus blocks not yet fetched.",
            g(&self.hot_blocks) + (head - tip).max(0.0),
        )?;
        gauge(
            e,
            "tidewater_finalized_stale",
            "1 while the node's finalized block cannot be read and the watermark holds at the last known one.",
            if self.finalized_stale.load(Ordering::Relaxed) { 1.0 } else { 0.0 },
        )?;
        counter(
            e,
            "tidewater_finalized_errors",
            "Calls for the node's finalized block that failed.",
            n(&self.finalized_errors),
        )?;
        counter(e, "tidewater_reorgs", "Reorgs handled.", n(&self.reorgs))?;
        gauge(
            e,
            "tidewater_reorg_max_depth_blocks",
            "Deepest reorg handled since the start, in blocks.",
            g(&self.max_reorg_depth),
        )?;
        gauge(
            e,
            "tidewater_last_deep_reorg_checkpoint_block",
            "The checkpoint the last deep reorg invalidated (0: none since the start).",
            g(&self.last_deep_reorg_checkpoint),
        )?;
        gauge(
            e,
            "tidewater_last_deep_reorg_rolled_back_blocks",
            "Cold blocks the last deep reorg rolled back.",
            g(&self.last_deep_reorg_blocks),
        )?;
        gauge(
            e,
            "tidewater_last_deep_reorg_timestamp_seconds",
            "When the last deep reorg was handled (unix seconds; 0: none since the start).",
            g(&self.last_deep_reorg_time),
        )?;
        counter(
            e,
            "tidewater_deep_reorgs",
            "Reorgs deeper than the watermark (cold data rolled back).",
            n(&self.deep_reorgs),
        )?;
        counter(
            e,
            "tidewater_store_errors",
            "Commits to cold storage that failed for a transient store error (retried).",
            n(&self.store_errors),
        )?;
        let unavailable = self
            .store_unavailable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        gauge(
            e,
            "tidewater_store_unavailable",
            "1 while cold storage (the object store or its coordinator) cannot be written.",
            f64::from(u8::from(unavailable)),
        )?;
        counter(
            e,
            "tidewater_blocks_applied",
            "Blocks applied to the hot buffer.",
            n(&self.blocks_applied),
        )?;
        counter(
            e,
            "tidewater_empty_answers_deferred",
            "Empty answers for blocks whose full bloom said maybe, checked at compaction instead of at once.",
            n(&self.empty_deferred),
        )?;
        counter(
            e,
            "tidewater_blocks_repaired",
            "Blocks whose empty answer the check at compaction found short of logs (reverted and applied again).",
            n(&self.blocks_repaired),
        )?;
        counter(
            e,
            "tidewater_empty_runs_unanchored",
            "Runs of deferred empty answers asked again block by block (no held log of that part around them, and a ranged answer of []).",
            n(&self.empty_unanchored),
        )?;
        self.reorg_depth.encode(e, "tidewater_reorg_depth_blocks", "Depth of reorgs.")?;
        let mut stages = vec![
            (vec![("stage", "detected".to_string())], &self.detect_delay),
            (vec![("stage", "persisted".to_string())], &self.persist_delay),
        ];
        for (name, h) in self.later_stages.get().into_iter().flatten() {
            stages.push((vec![("stage", name.clone())], h.as_ref()));
        }
        Histogram::encode_family(
            e,
            "tidewater_stage_delay_seconds",
            "Delay from the block timestamp to each stage (detected, persisted; with --publish: live, published).",
            &stages,
        )
    }
}

/// The head follower.
#[derive(Debug)]
pub struct Tail {
    rpc: RpcClient,
    sources: Sources,
    catalog: Arc<EventCatalog>,
    chain_id: u64,
    cfg: TailConfig,
    bus: broadcast::Sender<ChainUpdate>,
    stats: Arc<TailStats>,
}

/// What the newest block another process committed is, brought up to date when called
/// (blocking: a standby syncs its replica of the store, then reads its manifest).
pub type CommittedFn =
    Arc<dyn Fn() -> tidewater_storage::Result<Option<(u64, B256)>> + Send + Sync>;

/// Where confirmed blocks go.
enum Cold {
    /// This process commits them (a lone tail, or the holder of the writer lease).
    Writer(Arc<Mutex<DatasetWriter>>),
    /// Another process (the leader) commits them; this tail follows its commits: the blocks
    /// it committed leave the hot buffer as confirmed, its rollbacks are reverted here.
    Follow {
        committed: CommittedFn,
        /// When the leader's commits were last read.
        checked: Instant,
        /// Headers of the blocks confirmed here lately, oldest first: what a rollback of the
        /// leader's reverts (it dropped their files).
        recent: std::collections::VecDeque<Header>,
    },
}

/// Mutable state of a running tail.
struct State {
    cold: Cold,
    hot: HotBuffer,
    pools: PoolSet,
    /// Last cold block (number, hash), if any.
    checkpoint: Option<(u64, B256)>,
    last_compaction: Instant,
    /// Hot blocks whose empty answer is checked at compaction: number → hash.
    unchecked: std::collections::BTreeMap<u64, B256>,
    /// Logs found for blocks the check at compaction reverted, used when they are applied again.
    repaired: std::collections::HashMap<B256, Vec<Log>>,
}

impl Tail {
    fn set_store_unavailable(&self, reason: Option<String>) {
        *self.stats.store_unavailable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            reason;
    }

    /// A tail over `sources` on chain `chain_id`.
    pub fn new(
        rpc: RpcClient,
        sources: Sources,
        chain_id: u64,
        cfg: TailConfig,
    ) -> tidewater_chain::Result<Self> {
        let catalog = Arc::new(EventCatalog::new(&sources)?);
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        Ok(Self { rpc, sources, catalog, chain_id, cfg, bus, stats: Arc::default() })
    }

    /// This tail counts into `stats` (a standby's metrics outlive each of its followers).
    pub fn with_stats(mut self, stats: Arc<TailStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Subscribes to chain updates (subscribe before [`Tail::run`] to miss nothing).
    pub fn subscribe(&self) -> broadcast::Receiver<ChainUpdate> {
        self.bus.subscribe()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<TailStats> {
        self.stats.clone()
    }

    fn publish(&self, u: ChainUpdate) {
        // No subscriber is fine: the tail's job is the dataset.
        let _ = self.bus.send(u);
    }

    /// The watermark for a head. With [`Finality::Finalized`], a node that has no `finalized`
    /// block (or refuses the tag) falls back to depth; a `finalized` call that fails for a
    /// while (an outage, a timeout) never does, since the chain's finality may be deeper than
    /// the depth: the watermark holds at the last finalized block seen, the stats say it is
    /// stale, and the call is tried again next round. With none seen yet, the error stands.
    pub async fn watermark(&self, head: u64) -> Result<u64> {
        let d = match self.cfg.finality {
            Finality::Depth(d) => return Ok(head.saturating_sub(d)),
            Finality::Finalized(d) => d,
        };
        let last = self.stats.finalized.load(Ordering::Relaxed);
        match self.rpc.header_at("finalized").await {
            Ok(Some(h)) => {
                self.stats.finalized.fetch_max(h.number, Ordering::Relaxed);
                self.stats.finalized_stale.store(false, Ordering::Relaxed);
                Ok(h.number.max(last).min(head))
            }
            Ok(None) => Ok(head.saturating_sub(d)),
            Err(e) if !e.is_transient() && last == 0 => {
                tracing::debug!(error = %e, "no finalized block on this node; using depth");
                Ok(head.saturating_sub(d))
            }
            Err(e) => {
                self.stats.finalized_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.finalized_stale.store(true, Ordering::Relaxed);
                if last == 0 {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, finalized = last, "cannot read the finalized block; the watermark holds at the last one seen");
                Ok(last.min(head))
            }
        }
    }

    /// Follows the head until cancelled. Cancellation is honoured between steps, never inside a
    /// compaction commit.
    pub async fn run(&self, writer: DatasetWriter, cancel: CancellationToken) -> Result<()> {
        let checkpoint = checkpoint_of(&writer);
        let writer = Arc::new(Mutex::new(writer));
        let st = State {
            cold: Cold::Writer(writer),
            hot: HotBuffer::default(),
            pools: PoolSet::default(),
            checkpoint,
            last_compaction: Instant::now(),
            unchecked: Default::default(),
            repaired: Default::default(),
        };
        self.drive(st, cancel).await
    }

    /// Follows the head as a standby until cancelled: the same hot buffer, reorg handling and
    /// bus as [`Tail::run`], but nothing is written. Confirmation comes from another process's
    /// commits (`committed`): hot blocks it committed are published as confirmed, and a
    /// rollback it made (a deep reorg) is published as a revert of the blocks it dropped.
    pub async fn follow(&self, committed: CommittedFn, cancel: CancellationToken) -> Result<()> {
        let c = committed.clone();
        let checkpoint = tokio::task::spawn_blocking(move || c()).await??;
        self.stats.checkpoint.store(checkpoint.map_or(0, |c| c.0), Ordering::Relaxed);
        let st = State {
            cold: Cold::Follow { committed, checked: Instant::now(), recent: Default::default() },
            hot: HotBuffer::default(),
            pools: PoolSet::default(),
            checkpoint,
            last_compaction: Instant::now(),
            unchecked: Default::default(),
            repaired: Default::default(),
        };
        self.drive(st, cancel).await
    }

    async fn drive(&self, mut st: State, cancel: CancellationToken) -> Result<()> {
        self.verify_checkpoint(&mut st).await?;
        st.pools = self.discover(&st).await?;
        tracing::info!(checkpoint = ?st.checkpoint.map(|c| c.0), pools = st.pools.len(), "tail started");
        let wake = Arc::new(tokio::sync::Notify::new());
        let _heads = self.cfg.ws.clone().map(|url| {
            tidewater_chain::SpawnedTask::spawn(heads::watch_heads(
                url,
                wake.clone(),
                cancel.child_token(),
            ))
        });
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let wait = match self.step(&mut st).await {
                Ok(caught_up) => {
                    failures = 0;
                    self.set_store_unavailable(None);
                    // Still behind the head: go on at once.
                    if caught_up {
                        self.cfg.poll_interval
                    } else {
                        Duration::ZERO
                    }
                }
                // The object store (or its coordinator) is down: the blocks stay in the hot
                // buffer, the commit is retried, nothing is lost.
                Err(Error::Storage(e)) if e.is_transient() => {
                    failures += 1;
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = tidewater_chain::backoff(
                        failures,
                        self.cfg.poll_interval,
                        OUTAGE_BACKOFF_MAX,
                    );
                    let reason = eyre_chain(&e);
                    tracing::warn!(error = %reason, failures, "cold storage unavailable; retrying");
                    self.set_store_unavailable(Some(reason));
                    wait.max(self.cfg.poll_interval)
                }
                // The node is down or failing: keep the state, wait, and catch up when it is back.
                Err(Error::Chain(e)) if e.is_transient() => {
                    failures += 1;
                    let wait = tidewater_chain::backoff(
                        failures,
                        self.cfg.poll_interval,
                        OUTAGE_BACKOFF_MAX,
                    );
                    tracing::warn!(error = %e, failures, "node unavailable; retrying");
                    wait.max(self.cfg.poll_interval)
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
            }
        }
        match st.cold {
            Cold::Writer(_) => self.flush(&mut st).await,
            Cold::Follow { .. } => Ok(()),
        }
    }

    /// On a stop: commits every confirmed block still in the hot buffer, whatever the batch
    /// thresholds, so the dataset on disk reaches the watermark.
    async fn flush(&self, st: &mut State) -> Result<()> {
        let watermark = match self.rpc.block_number().await {
            Ok(head) => self.watermark(head).await.ok(),
            Err(_) => None,
        }
        .unwrap_or_else(|| self.stats.watermark.load(Ordering::Relaxed));
        let before = st.checkpoint.map(|c| c.0);
        self.compact(st, watermark, true).await?;
        let after = st.checkpoint.map(|c| c.0);
        if after != before {
            tracing::info!(checkpoint = ?after, watermark, "committed confirmed blocks before stopping");
        }
        Ok(())
    }

    async fn discover(&self, st: &State) -> Result<PoolSet> {
        let Some(u) = &self.sources.uniswap_v3 else { return Ok(PoolSet::default()) };
        let before_next = self.next_block(st).saturating_sub(1);
        let Some(range) = BlockRange::try_new(u.factory_start_block, before_next) else {
            return Ok(PoolSet::default());
        };
        let sizer = RangeSizer::new(DEFAULT_LOG_RANGE, DEFAULT_MAX_LOG_RANGE);
        // Checked: a pool a lagging provider hid here would lose every later log of it.
        Ok(discover_pools_checked(&self.rpc, u.factory, range, &sizer, Checks::Blocks).await?)
    }

    /// One round: catch up to the head (handling reorgs), then compact what is confirmed.
    /// Far behind the head, a round stops after [`Tail::catch_up_batch`] blocks, so the hot
    /// buffer is compacted (and its deferred empty answers checked) as it goes rather than
    /// holding the whole way to the head. Returns whether the round reached the head.
    async fn step(&self, st: &mut State) -> Result<bool> {
        let head = self.rpc.block_number().await?;
        self.stats.head.store(head, Ordering::Relaxed);
        // A reorg that kept the height (or shortened the chain) shows at our tip's height.
        if let Some(tip) = st.hot.tip().cloned() {
            let at = tip.header.number.min(head);
            if let Some(h) = self.rpc.header_at(&format!("{at:#x}")).await? {
                let ours = st.hot.iter().find(|b| b.header.number == at).map(|b| b.header.hash);
                if ours.is_some_and(|o| o != h.hash) {
                    let _ = self.reorg(st).await?;
                }
            }
        }
        let mut applied = 0u64;
        loop {
            let next = self.next_block(st);
            if next > head || applied >= self.catch_up_batch() {
                break;
            }
            let Some(header) = self.rpc.header_at(&format!("{next:#x}")).await? else { break };
            if header.parent_hash != self.tip_hash(st).unwrap_or(header.parent_hash) {
                if self.reorg(st).await? == 0 {
                    // Nothing was orphaned: the node is inconsistent for now (lagging behind a
                    // load balancer). Try again next poll rather than hammering it.
                    break;
                }
                continue;
            }
            let (n, hash) = (header.number, header.hash);
            let block = match self.fetch_block(st, header).await {
                Ok(b) => b,
                // The block was orphaned between its header and its logs ("unknown block"):
                // the next round sees the new branch and reorgs.
                Err(e) if !self.is_canonical(n, hash).await? => {
                    tracing::debug!(block = n, error = %e, "block orphaned while fetching it");
                    break;
                }
                Err(e) => return Err(e),
            };
            let block = Arc::new(block);
            st.hot.push(block.clone()).expect("invariant: the block extends the tip");
            applied += 1;
            self.stats.blocks_applied.fetch_add(1, Ordering::Relaxed);
            self.record_buffer(st);
            self.stats.detect_delay.observe(unix_now() - block.header.timestamp as f64);
            self.publish(ChainUpdate::Applied(block));
        }
        let caught_up = self.next_block(st) > head;
        if caught_up {
            self.stats.caught_up.store(true, Ordering::Relaxed);
        }
        self.record_buffer(st);
        let watermark = self.watermark(head).await?;
        self.stats.watermark.store(watermark, Ordering::Relaxed);
        self.compact(st, watermark, false).await?;
        Ok(caught_up || applied < self.catch_up_batch())
    }

    /// Blocks one round applies at most before compacting: twice the compaction batch, and
    /// at least [`MIN_CATCH_UP_BATCH`] (a round also asks for the head and the watermark).
    fn catch_up_batch(&self) -> u64 {
        (2 * self.cfg.compact_blocks).max(MIN_CATCH_UP_BATCH)
    }

    /// Publishes the buffer's size and tip (block, timestamp) to the stats.
    fn record_buffer(&self, st: &State) {
        self.stats.hot_blocks.store(st.hot.len() as u64, Ordering::Relaxed);
        self.stats.tip.store(self.next_block(st).saturating_sub(1), Ordering::Relaxed);
        if let Some(t) = st.hot.tip() {
            self.stats.tip_timestamp.store(t.header.timestamp, Ordering::Relaxed);
        }
    }

    fn next_block(&self, st: &State) -> u64 {
        match (st.hot.tip(), st.checkpoint) {
            (Some(t), _) => t.header.number + 1,
            (None, Some((n, _))) => n + 1,
            (None, None) => self.cfg.start_block,
        }
    }

    fn tip_hash(&self, st: &State) -> Option<B256> {
        st.hot.tip().map(|t| t.header.hash).or(st.checkpoint.map(|c| c.1))
    }

    /// Fetches a block's watched logs by hash, with the completeness checks of a range fetch.
    async fn fetch_block(&self, st: &mut State, header: Header) -> Result<HotBlock> {
        let n = header.number;
        // Logs the check at compaction found for this block (it was reverted to apply them).
        let found = st.repaired.remove(&header.hash);
        let mut again = false;
        loop {
            let filter = self.cfg.filter_mode.filter(
                self.catalog.contracts(),
                st.pools.created_by(n),
                self.catalog.pool_topic0s(),
            );
            let mut logs = match &found {
                // Found without the pools they create: those pools' logs here are asked for.
                Some(l) if again => {
                    let mut all = l.clone();
                    all.extend(self.fetch_parts(st, &filter, &header).await?);
                    all
                }
                Some(l) => l.clone(),
                None => self.fetch_parts(st, &filter, &header).await?,
            };
            again = true;
            logs.sort_unstable_by_key(|l| l.log_index);
            // A watched contract's log with a pool selector is in two parts' answers.
            logs.dedup_by_key(|l| l.log_index);
            if logs.iter().any(|l| l.block_hash != header.hash || l.block_number != n) {
                return Err(tidewater_chain::Error::Inconsistent {
                    range: BlockRange::new(n, n),
                    what: "a log of another block in a by-hash answer".into(),
                }
                .into());
            }
            // Pools created in this very block emit in it too: refetch with them included.
            let before = st.pools.len();
            if let Some(u) = &self.sources.uniswap_v3 {
                st.pools.extend_from_logs(u.factory, &logs);
            }
            if st.pools.len() == before {
                if !filter.open_topic0s.is_empty() {
                    st.pools.retain_watched(&mut logs, &filter.addresses);
                }
                return self.hot_block(st, header, logs);
            }
        }
    }

    /// The hot block of `header` with its watched `logs` (sorted), decoded.
    fn hot_block(&self, st: &State, header: Header, logs: Vec<Log>) -> Result<HotBlock> {
        let pools = &st.pools;
        let events = tidewater_chain::encode::decode_batches(&self.catalog, &logs, |a, b| {
            pools.is_pool_at(a, b)
        })?
        .batches
        .into_iter()
        .filter(|(_, b)| b.num_rows() > 0)
        .collect();
        Ok(HotBlock { header, logs, events })
    }

    /// The block's logs for `filter`, one request per part ([`LogFilter::parts`]). A part that
    /// comes back empty while the bloom says its logs may be there is asked again at once, or
    /// left to the check at compaction ([`Tail::empty_check`]): each part is answered on its
    /// own, so one can be a lagging backend's `[]` while the others are complete.
    async fn fetch_parts(
        &self,
        st: &mut State,
        filter: &LogFilter,
        header: &Header,
    ) -> Result<Vec<Log>> {
        let mut logs = Vec::new();
        for part in filter.parts() {
            let mut got = self.rpc.get_logs_by_hash(&part, header.hash).await?;
            if got.is_empty() {
                match self.empty_check(st, &part, header) {
                    BloomSays::Nothing => {}
                    // The bloom says maybe: an empty answer is not believed twice from the same
                    // source (another provider, then the block's receipts decide).
                    BloomSays::Likely => {
                        got =
                            tidewater_chain::confirm_empty_block(&self.rpc, &part, header).await?;
                    }
                    // A full bloom says maybe for nearly every block: checked at compaction,
                    // with one ranged request for a run of such blocks (`recheck`).
                    BloomSays::Noise => {
                        if st.unchecked.insert(header.number, header.hash).is_none() {
                            self.stats.empty_deferred.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            logs.append(&mut got);
        }
        Ok(logs)
    }

    /// What to do about an empty answer for `header`'s block ([`EmptyChecks`]): nothing, ask
    /// again at once ([`BloomSays::Likely`]), or at compaction ([`BloomSays::Noise`]). A
    /// standby asks at once: it does not compact, the leader's commits confirm its blocks.
    fn empty_check(&self, st: &State, filter: &LogFilter, header: &Header) -> BloomSays {
        let pools = if filter.open_topic0s.is_empty() {
            Vec::new()
        } else {
            st.pools.created_by(header.number)
        };
        let says = filter.bloom_says(&header.logs_bloom, &pools);
        let follower = matches!(st.cold, Cold::Follow { .. });
        match (says, self.cfg.empty_checks) {
            (BloomSays::Nothing, _) => BloomSays::Nothing,
            _ if follower => BloomSays::Likely,
            (_, EmptyChecks::AtOnce) => BloomSays::Likely,
            (_, EmptyChecks::Deferred) => BloomSays::Noise,
            (says, EmptyChecks::Auto) => says,
        }
    }

    /// Checks the empty answers left for compaction ([`EmptyChecks`]) of hot blocks through
    /// `through`, part by part of the filter: one ranged `eth_getLogs` per run of such blocks,
    /// reaching to the nearest held blocks with logs of that part on either side (an answer
    /// holding their logs is not a lagging node's `[]`; with none after the run, its last block
    /// is asked by hash, then its receipts). When a block missed logs, the hot buffer is
    /// reverted to below it (`Reverted` on the bus, as in a reorg) and applied again from what
    /// it holds, with the logs found. Returns `false` only when a found log created a pool: the
    /// blocks after it are then fetched again (the logs found are kept for when their blocks
    /// are applied again) and nothing is compacted this round.
    async fn recheck(&self, st: &mut State, through: u64) -> Result<bool> {
        let next = self.next_block(st);
        st.repaired.retain(|_, logs| logs.first().is_some_and(|l| l.block_number >= next));
        let held: std::collections::HashMap<u64, B256> =
            st.hot.iter().map(|b| (b.header.number, b.header.hash)).collect();
        st.unchecked.retain(|n, h| held.get(n) == Some(h));
        let due: Vec<u64> = st.unchecked.range(..=through).map(|(n, _)| *n).collect();
        let blocks: Vec<Arc<HotBlock>> =
            st.hot.iter().take_while(|b| b.header.number <= through).cloned().collect();
        if due.is_empty() || blocks.is_empty() {
            return Ok(true);
        }
        let filter = self.cfg.filter_mode.filter(
            self.catalog.contracts(),
            st.pools.created_by(through),
            self.catalog.pool_topic0s(),
        );
        let mut repairs: std::collections::BTreeMap<u64, (B256, Vec<Log>)> = Default::default();
        for part in filter.parts() {
            for r in recheck_runs(&blocks, &due, &part) {
                let Some(run) = blocks.get(r.lo..=r.hi) else { continue };
                let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
                let range = BlockRange::new(first.header.number, last.header.number);
                let mut attempt = 0;
                let found = loop {
                    let got = self.recheck_range(st, &filter, &part, run, r).await;
                    match got {
                        Err(e @ tidewater_chain::Error::Inconsistent { .. })
                            if attempt < tidewater_chain::INCONSISTENT_RETRIES =>
                        {
                            attempt += 1;
                            tracing::debug!(error = %e, %range, attempt, "checking deferred empty answers again");
                            tokio::time::sleep(tidewater_chain::backoff(
                                attempt,
                                tidewater_chain::DEFAULT_BACKOFF_BASE,
                                tidewater_chain::DEFAULT_BACKOFF_MAX,
                            ))
                            .await;
                        }
                        other => break other?,
                    }
                };
                for (n, hash, logs) in found {
                    let entry = repairs.entry(n).or_insert_with(|| (hash, Vec::new()));
                    for l in logs {
                        if !entry.1.iter().any(|x| x.log_index == l.log_index) {
                            entry.1.push(l);
                        }
                    }
                }
            }
        }
        let Some(from) = repairs.keys().next().copied() else {
            st.unchecked.retain(|n, _| *n > through);
            return Ok(true);
        };
        tracing::warn!(
            block = from,
            blocks = repairs.len(),
            "empty answers missed logs (found by the check at compaction); reverting to apply them"
        );
        self.stats.blocks_repaired.fetch_add(repairs.len() as u64, Ordering::Relaxed);
        for (_, logs) in repairs.values_mut() {
            logs.sort_unstable_by_key(|l| l.log_index);
        }
        // A pool created by a log the lie hid: the blocks after it were fetched without that
        // pool's address, so they are fetched again.
        let creates_pool = self.sources.uniswap_v3.as_ref().and_then(|u| {
            let mut pools = st.pools.clone();
            repairs.iter().find_map(|(n, (_, logs))| {
                pools.extend_from_logs(u.factory, logs);
                (pools.len() != st.pools.len()).then_some(*n)
            })
        });
        let mut reverted = Vec::new();
        while let Some(tip) = st.hot.tip().cloned().filter(|t| t.header.number >= from) {
            st.hot.pop_tip();
            self.publish(ChainUpdate::Reverted(tip.clone()));
            reverted.push(tip);
        }
        if let Some(creating) = creates_pool {
            // Logs found after that block were asked for without the new pool: not kept.
            for (_, (hash, logs)) in repairs.range(..=creating) {
                st.repaired.insert(*hash, logs.clone());
            }
            st.pools.forget_after(from.saturating_sub(1));
            st.unchecked.retain(|n, _| *n < from);
            self.record_buffer(st);
            return Ok(false);
        }
        // Otherwise the blocks are applied again from what the buffer holds, the repaired ones
        // with the logs found: no request, and no new lie can come in between. Every block
        // through `through` is checked now.
        for b in reverted.into_iter().rev() {
            let b = match repairs.remove(&b.header.number) {
                Some((hash, logs)) if hash == b.header.hash => {
                    Arc::new(self.hot_block(st, b.header.clone(), logs)?)
                }
                _ => b,
            };
            st.hot.push(b.clone()).expect("invariant: the block held there extends the tip");
            self.publish(ChainUpdate::Applied(b));
        }
        st.unchecked.retain(|n, _| *n > through);
        self.record_buffer(st);
        Ok(true)
    }

    /// One ranged answer of [`Tail::recheck`]: the logs `part` selects in `held` (consecutive
    /// hot blocks), compared block by block with what they hold. Returns the blocks that missed
    /// logs, each with all its logs (held and found); a block whose held logs are not all in
    /// the answer is [`tidewater_chain::Error::Inconsistent`] (the answer is short). With no
    /// anchor after the run, its last block is asked by hash, then its receipts, when the
    /// answer has nothing there (a lagging index). With no anchor on either side and nothing at
    /// all in the answer, nothing tells an honest `[]` from a provider's `[]` to the whole
    /// range: every deferred block of the run is asked that way.
    async fn recheck_range(
        &self,
        st: &State,
        filter: &LogFilter,
        part: &LogFilter,
        held: &[Arc<HotBlock>],
        run: RecheckRun,
    ) -> tidewater_chain::Result<Vec<(u64, B256, Vec<Log>)>> {
        let (Some(first), Some(last)) = (held.first(), held.last()) else { return Ok(Vec::new()) };
        let range = BlockRange::new(first.header.number, last.header.number);
        let sizer = RangeSizer::new(DEFAULT_LOG_RANGE, DEFAULT_MAX_LOG_RANGE);
        let mut logs = tidewater_chain::fetch_logs(&self.rpc, part, range, &sizer).await?;
        if !run.before && !run.after && logs.is_empty() {
            let due =
                held.iter().filter(|b| st.unchecked.get(&b.header.number) == Some(&b.header.hash));
            for b in due {
                logs.extend(
                    tidewater_chain::confirm_empty_block(&self.rpc, part, &b.header).await?,
                );
            }
            self.stats.empty_unanchored.fetch_add(1, Ordering::Relaxed);
        } else if !run.after && logs.last().is_none_or(|l| l.block_number < range.end) {
            logs.extend(tidewater_chain::confirm_empty_block(&self.rpc, part, &last.header).await?);
        }
        if !part.open_topic0s.is_empty() {
            st.pools.retain_watched(&mut logs, &filter.addresses);
        }
        logs.sort_unstable_by_key(|l| (l.block_number, l.log_index));
        logs.dedup_by_key(|l| (l.block_number, l.log_index));
        let inconsistent = |what: String| tidewater_chain::Error::Inconsistent { range, what };
        let mut found = logs.into_iter().peekable();
        let mut short = Vec::new();
        // Every block asked for, those the answer says nothing about too.
        for b in held {
            let n = b.header.number;
            let mut answer: Vec<Log> = Vec::new();
            while let Some(l) = found.next_if(|l| l.block_number == n) {
                answer.push(l);
            }
            if answer.iter().any(|l| l.block_hash != b.header.hash) {
                return Err(inconsistent(format!("a log of block {n} with another hash")));
            }
            let have: Vec<u64> =
                b.logs.iter().filter(|l| part.matches(l)).map(|l| l.log_index).collect();
            if have.iter().any(|i| !answer.iter().any(|l| l.log_index == *i)) {
                return Err(inconsistent(format!(
                    "the answer missed logs of block {n} held in the hot buffer"
                )));
            }
            if answer.len() > have.len() {
                let mut all = b.logs.clone();
                all.extend(answer.into_iter().filter(|l| !have.contains(&l.log_index)));
                short.push((n, b.header.hash, all));
            }
        }
        if let Some(l) = found.next() {
            let n = l.block_number;
            return Err(inconsistent(format!("a log of block {n} outside the blocks asked for")));
        }
        Ok(short)
    }

    /// Walks back to the common ancestor, reverting orphaned blocks newest first. When the
    /// orphaned range reaches below the checkpoint, rolls the cold tier back too.
    async fn reorg(&self, st: &mut State) -> Result<u64> {
        let mut depth = 0u64;
        while let Some(tip) = st.hot.tip().cloned() {
            let canonical = self.rpc.header_at(&format!("{:#x}", tip.header.number)).await?;
            if canonical.is_some_and(|h| h.hash == tip.header.hash) {
                break;
            }
            st.hot.pop_tip();
            st.pools.forget_after(tip.header.number - 1);
            depth += 1;
            self.publish(ChainUpdate::Reverted(tip));
        }
        if st.hot.is_empty() {
            if let Some((n, hash)) = st.checkpoint {
                if !self.is_canonical(n, hash).await? {
                    depth += self.deep_reorg(st).await?;
                }
            }
        }
        if depth > 0 {
            self.stats.reorgs.fetch_add(1, Ordering::Relaxed);
            self.stats.reorg_depth.observe(depth as f64);
        }
        self.record_buffer(st);
        self.stats.max_reorg_depth.fetch_max(depth, Ordering::Relaxed);
        tracing::info!(depth, tip = ?st.hot.tip().map(|t| t.header.number), "reorg handled");
        Ok(depth)
    }

    async fn is_canonical(&self, n: u64, hash: B256) -> Result<bool> {
        Ok(self.rpc.header_at(&format!("{n:#x}")).await?.is_some_and(|h| h.hash == hash))
    }

    /// Cold data past the common ancestor is rolled back. Confirms twice against the node first,
    /// so a lagging answer does not rewrite cold data. Returns the blocks rolled back.
    async fn deep_reorg(&self, st: &mut State) -> Result<u64> {
        let writer = match &st.cold {
            Cold::Writer(w) => w.clone(),
            // The leader rolls its commits back; this follower reverts them once it has
            // (see `follow_commits`), and waits until then.
            Cold::Follow { .. } => {
                tracing::debug!(checkpoint = ?st.checkpoint.map(|c| c.0), "the leader's checkpoint is no longer canonical; waiting for its rollback");
                return Ok(0);
            }
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some((cp, cp_hash)) = st.checkpoint else { return Ok(0) };
        if self.is_canonical(cp, cp_hash).await? {
            return Ok(0);
        }
        let chunks: Vec<(u64, u64, B256)> = lock_writer(&writer)?
            .manifest()
            .chunks()
            .iter()
            .map(|c| (c.start, c.end, c.last_block_hash))
            .collect();
        let mut keep_through = None;
        for (_, end, hash) in chunks.iter().rev() {
            if self.is_canonical(*end, *hash).await? {
                keep_through = Some(*end);
                break;
            }
        }
        let (checkpoint, orphaned) = tokio::task::spawn_blocking(move || {
            let mut w = lock_writer(&writer)?;
            // Read the cold blocks being dropped first, so subscribers see them reverted.
            let root = w.root().to_path_buf();
            let doomed: Vec<_> = w
                .manifest()
                .chunks()
                .iter()
                .filter(|c| keep_through.is_none_or(|k| c.end > k))
                .cloned()
                .collect();
            let orphaned = tidewater_storage::cold_blocks(&root, &doomed)?;
            w.rollback(keep_through)?;
            let new_cp = checkpoint_of(&w);
            w.record_deep_reorg(&serde_json::json!({
                "old_checkpoint": cp,
                "old_checkpoint_hash": cp_hash,
                "new_checkpoint": new_cp.map(|c| c.0),
                "rolled_back_blocks": orphaned.len(),
                "unix_time": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            }))?;
            Ok::<_, Error>((new_cp, orphaned))
        })
        .await??;
        st.checkpoint = checkpoint;
        for (header, logs) in orphaned.into_iter().rev() {
            let events = tidewater_chain::encode::decode_batches(&self.catalog, &logs, |a, b| {
                st.pools.is_pool_at(a, b)
            })?
            .batches
            .into_iter()
            .filter(|(_, b)| b.num_rows() > 0)
            .collect();
            self.publish(ChainUpdate::Reverted(Arc::new(HotBlock { header, logs, events })));
        }
        st.pools.forget_after(st.checkpoint.map_or(0, |c| c.0));
        let rolled = cp - st.checkpoint.map_or(self.cfg.start_block.saturating_sub(1), |c| c.0);
        self.stats.record_deep_reorg(cp, rolled);
        tracing::error!(
            checkpoint = cp,
            new_checkpoint = ?st.checkpoint.map(|c| c.0),
            rolled_back_blocks = rolled,
            "deep reorg: the checkpoint is no longer canonical; cold data rolled back to the common ancestor"
        );
        Ok(rolled)
    }

    async fn verify_checkpoint(&self, st: &mut State) -> Result<()> {
        if let Some((n, hash)) = st.checkpoint {
            if !self.is_canonical(n, hash).await? {
                self.deep_reorg(st).await?;
            }
        }
        Ok(())
    }

    /// Commits the hot blocks at or below the watermark when enough have gathered or they have
    /// waited long enough.
    async fn compact(&self, st: &mut State, watermark: u64, force: bool) -> Result<()> {
        if matches!(st.cold, Cold::Follow { .. }) {
            return self.follow_commits(st, watermark).await;
        }
        let ready = st.hot.iter().take_while(|b| b.header.number <= watermark).count() as u64;
        if ready == 0
            || (!force
                && ready < self.cfg.compact_blocks
                && st.last_compaction.elapsed() < self.cfg.compact_interval)
        {
            return Ok(());
        }
        let checked = match self.recheck(st, watermark).await {
            Ok(checked) => checked,
            // Stopping while the node is unreachable: the blocks stay out of the cold tier and
            // are fetched again on the next start (the checkpoint is below them).
            Err(Error::Chain(e)) if force && e.is_transient() => {
                tracing::warn!(error = %e, "cannot check deferred empty answers while stopping; their blocks are left for the next start");
                false
            }
            Err(e) => return Err(e),
        };
        if !checked {
            return Ok(());
        }
        // Commits never cross a merge cell, so each complete cell can be merged whole.
        let m = self.cfg.merge_blocks.max(1);
        loop {
            let first = st.hot.iter().next().map(|b| b.header.number);
            let Some(first) = first.filter(|n| *n <= watermark) else { break };
            let cell_end = (first / m + 1) * m - 1;
            self.compact_through(st, watermark.min(cell_end), cell_end).await?;
        }
        Ok(())
    }

    /// A follower's compaction: reads the leader's newest commit (at most every
    /// [`FOLLOW_CHECK_INTERVAL`], and only while it matters: a hot block at or below the
    /// watermark waits for it, or the hot buffer is empty), confirms the hot blocks it covers,
    /// and reverts what the leader rolled back.
    async fn follow_commits(&self, st: &mut State, watermark: u64) -> Result<()> {
        let Cold::Follow { committed, checked, recent } = &mut st.cold else { return Ok(()) };
        let waiting = st.hot.iter().next().is_none_or(|b| b.header.number <= watermark);
        let every = self.cfg.poll_interval.max(FOLLOW_CHECK_INTERVAL);
        if !waiting || checked.elapsed() < every {
            return Ok(());
        }
        *checked = Instant::now();
        let c = committed.clone();
        let cp = tokio::task::spawn_blocking(move || c()).await??;
        let ours = st.checkpoint;
        if cp == ours {
            return Ok(());
        }
        let rolled_back = match (cp, ours) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some((n, h)), Some((o, oh))) => n < o || (n == o && h != oh),
        };
        if !rolled_back {
            let Some((n, h)) = cp else { return Ok(()) };
            let held = st.hot.iter().find(|b| b.header.number == n).map(|b| b.header.hash);
            match held {
                // Our chain is the leader's through n (hashes link): those blocks are confirmed.
                Some(ours_n) if ours_n == h => {
                    let blocks = st.hot.drain_through(n);
                    recent.extend(blocks.iter().map(|b| b.header.clone()));
                    while recent.len() > FOLLOW_RECENT {
                        recent.pop_front();
                    }
                    st.checkpoint = Some((n, h));
                    self.stats.checkpoint.store(n, Ordering::Relaxed);
                    self.record_buffer(st);
                    for b in blocks {
                        self.publish(ChainUpdate::Confirmed {
                            number: b.header.number,
                            hash: b.header.hash,
                        });
                    }
                    return Ok(());
                }
                // Another block at n: one of us holds an orphan; the reorg checks decide.
                Some(_) => return Ok(()),
                // Not fetched yet: wait for it, unless our own checkpoint was orphaned (then
                // the leader rolled back and went on: adopt its commits).
                None => match ours {
                    Some((o, oh)) if !self.is_canonical(o, oh).await? => {}
                    _ => return Ok(()),
                },
            }
        }
        // The leader rolled back (a deep reorg) past our checkpoint: revert what we hold above
        // its newest commit, newest first, then the cold blocks it dropped (the live state
        // reloads from the cold tier), and go on from its commit.
        let mut depth = 0u64;
        while let Some(tip) = st.hot.pop_tip() {
            depth += 1;
            self.publish(ChainUpdate::Reverted(tip));
        }
        if let Some((o, oh)) = ours {
            let kept = cp.map_or(self.cfg.start_block.saturating_sub(1), |c| c.0);
            // Each dropped block we confirmed, newest first (headers only: the live state
            // reloads from the cold tier at the first and reports the others); at least ours.
            // Above the leader's commit, and below it those the chain orphaned (the leader
            // rolled back and went on past them between two looks).
            let mut dropped: Vec<Header> = Vec::new();
            while let Some(h) = recent.back().cloned() {
                if h.number <= kept && self.is_canonical(h.number, h.hash).await? {
                    break;
                }
                recent.pop_back();
                dropped.push(h);
            }
            if dropped.first().is_none_or(|h| h.hash != oh) {
                dropped.insert(
                    0,
                    Header {
                        number: o,
                        hash: oh,
                        parent_hash: B256::ZERO,
                        timestamp: 0,
                        logs_bloom: Default::default(),
                    },
                );
            }
            for header in dropped {
                self.publish(ChainUpdate::Reverted(Arc::new(HotBlock {
                    header,
                    logs: vec![],
                    events: Default::default(),
                })));
            }
            let dropped = o.saturating_sub(kept);
            depth += dropped;
            self.stats.record_deep_reorg(o, dropped);
        }
        st.checkpoint = cp;
        st.pools = self.discover(st).await?;
        self.stats.checkpoint.store(cp.map_or(0, |c| c.0), Ordering::Relaxed);
        self.stats.reorgs.fetch_add(1, Ordering::Relaxed);
        self.stats.reorg_depth.observe(depth as f64);
        self.stats.max_reorg_depth.fetch_max(depth, Ordering::Relaxed);
        self.record_buffer(st);
        tracing::warn!(checkpoint = ?cp.map(|c| c.0), reverted = depth, "the leader rolled its commits back: following");
        Ok(())
    }

    async fn compact_through(&self, st: &mut State, through: u64, cell_end: u64) -> Result<()> {
        let m = self.cfg.merge_blocks.max(1);
        // Left in the hot buffer until the commit succeeded (a store outage retries them).
        let blocks: Vec<Arc<HotBlock>> =
            st.hot.iter().take_while(|b| b.header.number <= through).cloned().collect();
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else { return Ok(()) };
        let range = BlockRange::new(first.header.number, last.header.number);
        let headers: Vec<Header> = blocks.iter().map(|b| b.header.clone()).collect();
        let data = RangeData {
            blocks: headers.iter().map(tidewater_chain::BlockRow::from).collect(),
            headers,
            logs: blocks.iter().flat_map(|b| b.logs.iter().cloned()).collect(),
            bloom_refetches: 0,
        };
        let (catalog, pools, chain_id) = (self.catalog.clone(), st.pools.clone(), self.chain_id);
        let encoded = tidewater_chain::run_on_rayon(move || {
            encode_chunk(&catalog, &data, chain_id, &pools, range)
        })
        .await
        .map_err(|source| Error::EncoderPanicked { range, source })??;
        let commit = encoded.commit;
        let Cold::Writer(writer) = &st.cold else { return Ok(()) };
        let writer = writer.clone();
        let end = range.end;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut w = lock_writer(&writer)?;
            w.commit(commit)?;
            // This commit completed its cell: merge the cell's small commits into one chunk.
            if end == cell_end {
                match w.merge(cell_end + 1 - m, cell_end) {
                    Ok(Some(merged)) => {
                        tracing::info!(start = merged.start, end = merged.end, "merged cold chunks")
                    }
                    Ok(None) => {}
                    // The commit stands; the cell keeps its small chunks.
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "merging cold chunks failed; left unmerged")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await??;
        st.hot.drain_through(through);
        st.checkpoint = Some((last.header.number, last.header.hash));
        st.last_compaction = Instant::now();
        self.stats.checkpoint.store(last.header.number, Ordering::Relaxed);
        self.record_buffer(st);
        let now = unix_now();
        for b in &blocks {
            self.stats.persist_delay.observe(now - b.header.timestamp as f64);
            self.publish(ChainUpdate::Confirmed { number: b.header.number, hash: b.header.hash });
        }
        tracing::debug!(%range, "compacted confirmed blocks");
        Ok(())
    }
}

/// An error with its causes, for a one-line reason.
fn eyre_chain(e: &tidewater_storage::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn checkpoint_of(w: &DatasetWriter) -> Option<(u64, B256)> {
    w.manifest().last().map(|c| (c.end, c.last_block_hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_chain::Address;

    /// Consecutive blocks from 100, block i holding `logs[i]` logs of address 1.
    fn blocks(logs: &[usize]) -> Vec<Arc<HotBlock>> {
        logs.iter()
            .enumerate()
            .map(|(i, n)| {
                let number = 100 + i as u64;
                let header = Header {
                    number,
                    hash: B256::with_last_byte(i as u8),
                    parent_hash: B256::ZERO,
                    timestamp: 0,
                    logs_bloom: Default::default(),
                };
                let logs = (0..*n as u64)
                    .map(|k| Log {
                        address: Address::with_last_byte(1),
                        topics: vec![],
                        data: Default::default(),
                        block_number: number,
                        block_hash: header.hash,
                        transaction_hash: B256::ZERO,
                        transaction_index: 0,
                        log_index: k,
                        removed: false,
                        block_timestamp: None,
                    })
                    .collect();
                Arc::new(HotBlock { header, logs, events: Default::default() })
            })
            .collect()
    }

    #[test]
    fn runs_of_deferred_blocks_reach_to_anchors_and_merge_across_quiet_gaps() {
        let run = |lo, hi, before, after| RecheckRun { lo, hi, before, after };
        let part = LogFilter { addresses: vec![Address::with_last_byte(1)], ..Default::default() };
        let other = LogFilter { addresses: vec![Address::with_last_byte(2)], ..Default::default() };
        //           100 101 102 103 104 105 106 107 108
        let b = blocks(&[5, 0, 0, 3, 0, 0, 0, 9, 0]);
        // 101 and 102: one run from the anchor before (100) to the one after (103).
        assert_eq!(recheck_runs(&b, &[101, 102], &part), vec![run(0, 3, true, true)]);
        // 104 and 106 with quiet blocks between: one run, anchored by 103 and 107.
        assert_eq!(recheck_runs(&b, &[104, 106], &part), vec![run(3, 7, true, true)]);
        // 108: nothing holds logs after it (its own last block is asked by hash then).
        assert_eq!(recheck_runs(&b, &[108], &part), vec![run(7, 8, true, false)]);
        // Blocks not held are ignored.
        assert_eq!(recheck_runs(&b, &[50, 300], &part), vec![]);
        // Anchors are blocks holding logs of that part: another part's has none.
        assert_eq!(recheck_runs(&b, &[101, 108], &other), vec![run(1, 8, false, false)]);
        // Busy blocks between two deferred ones split the runs once they hold more than
        // RECHECK_GAP_LOGS logs.
        let mut logs = vec![0; 5];
        logs[2] = RECHECK_GAP_LOGS + 1;
        let b = blocks(&logs);
        assert_eq!(
            recheck_runs(&b, &[101, 103], &part),
            vec![run(1, 2, false, true), run(2, 3, true, false)]
        );
        logs[2] = RECHECK_GAP_LOGS;
        let b = blocks(&logs);
        assert_eq!(recheck_runs(&b, &[101, 103], &part), vec![run(1, 3, false, false)]);
    }
}
