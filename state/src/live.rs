//! The live Uniswap V3 state: the head state kept in memory from the tail's [`ChainUpdate`]s,
//! with an undo journal per unconfirmed block so reorgs revert exactly what a block changed,
//! snapshots written at confirmed heights, and the stream of changes that SSE clients follow.
//!
//! ```text
//!   cold Parquet ──newest snapshot + fold──▶ state at the checkpoint
//!   bus: Applied(b)   ──fold b, keep its journal──▶ head state ──▶ event "pending"
//!        Reverted(b)  ──undo b's journal──────────▶ head state ──▶ event "reverted"
//!                     (b already confirmed: a deep reorg; reload from the cold tier)
//!        Confirmed(n) ──drop journals <= n, snapshot at multiples of the interval──▶ "confirmed"
//! ```
//!
//! One thread owns the [`LiveState`] and applies the bus; after each update it publishes an
//! immutable [`View`] (an `Arc` swapped through [`ArcSwap`]) with the update's stream events.
//! Readers ([`LiveReader`]: HTTP handlers, SSE) take the newest view without a lock and never
//! wait for the writer: a reload from the cold tier after a deep reorg is built on the writer's
//! copy while readers keep the previous view. A writer thread that panics marks the state
//! failed (`/ready` 503), rather than leaving a state that silently stopped.
//!
//! Invariants: the head state equals a fold of the canonical chain through the newest applied
//! block; every event in the history has a strictly increasing id; a view's `last_event_id`
//! is the newest event it includes, so a subscriber gets a view and exactly the events after
//! it.

use crate::pool_state::{
    cold_block_hash, cold_state_at, FoldError, Folder, Journal, PoolState, Position, RawLog,
    TickLiquidity, UniswapState,
};
use alloy_primitives::{Address, B256, U256};
use arc_swap::ArcSwap;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tidewater_chain::UniswapV3;
use tidewater_primitives::{ChainUpdate, HotBlock};
use tidewater_storage::Dataset;
use tokio::sync::broadcast;

/// Stream events kept for clients that reconnect with `Last-Event-ID`: 16Ki events is several
/// hours of blocks at 1 s with their confirmations and reverts, at a few MiB.
pub const DEFAULT_STREAM_HISTORY: usize = 16 * 1024;

/// Capacity of the channel that wakes stream clients; a client that falls further behind is
/// served from the history instead.
pub const STREAM_CAPACITY: usize = 1024;

/// What happened to a block, as the stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Applied, not yet confirmed.
    Pending,
    /// Final (in the cold tier).
    Confirmed,
    /// Left the canonical chain; its changes are undone.
    Reverted,
}

impl Status {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Reverted => "reverted",
        }
    }
}

/// One stream update: a block's status change and the state it left (after the change).
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Increasing id (the SSE `id`, and the cursor for `Last-Event-ID`).
    pub id: u64,
    /// Status.
    pub status: Status,
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Parent hash.
    pub parent_hash: B256,
    /// Pools whose scalar state changed, as they are after the change.
    pub pools: Vec<PoolState>,
    /// Ticks that changed, after the change (liquidity_gross 0: no longer initialized).
    pub ticks: Vec<(Address, i32, TickLiquidity)>,
    /// Positions that changed, after the change (None: burned or never existed), with their
    /// pool (after the change, or before it for a burned position) when known.
    pub positions: Vec<(U256, Option<Position>, Option<Address>)>,
    /// Pools this block touched (its own state, ticks or positions).
    pub touched: BTreeSet<Address>,
    /// When the update reached the live state (for the stream delay metric).
    pub received: std::time::Instant,
    /// The block (pending and reverted events of a hot block; None for confirmations and the
    /// revert of a block already undone by a reload), for its decoded events and timestamp.
    pub block: Option<Arc<HotBlock>>,
}

impl StreamEvent {
    /// The JSON payload, restricted to `pools` when given (None when nothing in it concerns
    /// them).
    pub fn to_json(&self, pools: Option<&HashSet<Address>>) -> Option<Value> {
        let keep = |a: &Address| pools.is_none_or(|f| f.contains(a));
        if pools.is_some() && !self.touched.iter().any(keep) {
            return None;
        }
        Some(json!({
            "id": self.id,
            "status": self.status.as_str(),
            "block": {"number": self.number, "hash": self.hash, "parent_hash": self.parent_hash},
            "pools": self.pools.iter().filter(|p| keep(&p.address)).map(PoolState::to_json).collect::<Vec<_>>(),
            "ticks": self.ticks.iter().filter(|t| keep(&t.0)).map(|(a, t, l)| json!({
                "pool": a,
                "tick": t,
                "liquidity_gross": l.liquidity_gross.to_string(),
                "liquidity_net": l.liquidity_net.to_string(),
            })).collect::<Vec<_>>(),
            "positions": self.positions.iter().filter(|(_, _, pool)| pool.is_none_or(|a| keep(&a))).map(|(id, p, _)| match p {
                Some(p) => p.to_json(),
                None => json!({"token_id": id.to_string(), "burned": true}),
            }).collect::<Vec<_>>(),
        }))
    }
}

#[derive(Debug)]
struct HotEntry {
    number: u64,
    hash: B256,
    block: Arc<HotBlock>,
    journal: Journal,
    touched: BTreeSet<Address>,
}

/// Where the state at a block comes from.
#[derive(Debug)]
pub enum StateAt {
    /// Computed in memory (the head or an unconfirmed block).
    Ready(Box<UniswapState>, bool),
    /// A confirmed block (the last field): fold it from the cold tier ([`cold_state_at`]) off
    /// the request path (open the dataset at this root then: the cold tier may have grown).
    Cold(std::path::PathBuf, UniswapV3, u64),
}

/// A block the state cannot be given for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Above the newest applied block.
    #[error("block {block} is above the head ({head})")]
    AboveHead {
        /// Asked.
        block: u64,
        /// Head.
        head: u64,
    },
    /// Below the first indexed block.
    #[error("block {block} is below the first indexed block ({first})")]
    BelowFirst {
        /// Asked.
        block: u64,
        /// First indexed.
        first: u64,
    },
    /// Nothing is indexed yet.
    #[error("nothing is indexed yet")]
    Empty,
}

/// The live state as of one update, immutable: what readers see. The writer publishes a new one
/// after every update; a reader holds its `Arc` for as long as it needs, without a lock, and
/// never waits for the writer (a fold, a snapshot or a reload from the cold tier after a deep
/// reorg happen on the writer's copy, off to the side). Cloning the state is cheap: its maps
/// share structure ([`imbl::OrdMap`]).
#[derive(Debug, Clone)]
pub struct View {
    head: UniswapState,
    hot: Arc<[Arc<HotEntry>]>,
    confirmed: Option<(u64, B256)>,
    first_block: Option<u64>,
    degraded: bool,
    root: Arc<std::path::Path>,
    u: Arc<UniswapV3>,
    chain_id: u64,
    last_event_id: u64,
}

impl View {
    /// The head state.
    pub fn head(&self) -> &UniswapState {
        &self.head
    }

    /// The newest applied block, if any.
    pub fn head_block(&self) -> Option<u64> {
        self.hot.last().map(|e| e.number).or(self.confirmed.map(|c| c.0))
    }

    /// The newest confirmed block, if any.
    pub fn confirmed(&self) -> Option<(u64, B256)> {
        self.confirmed
    }

    /// Whether block `n` is confirmed.
    pub fn is_confirmed(&self, n: u64) -> bool {
        self.confirmed.is_some_and(|c| n <= c.0)
    }

    /// The first indexed block.
    pub fn first_block(&self) -> Option<u64> {
        self.first_block
    }

    /// Unconfirmed blocks held.
    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// The unconfirmed blocks, oldest first (for SQL over the hot buffer).
    pub fn hot_blocks(&self) -> Vec<Arc<HotBlock>> {
        self.hot.iter().map(|e| e.block.clone()).collect()
    }

    /// The unconfirmed blocks, oldest first, with the pools each touched.
    pub fn hot_touched(&self) -> Vec<(Arc<HotBlock>, BTreeSet<Address>)> {
        self.hot.iter().map(|e| (e.block.clone(), e.touched.clone())).collect()
    }

    /// The dataset's chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The data directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Whether the state lost track of the chain (a missed update, an event it cannot take).
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// The id of the newest stream event this view includes (0 before any).
    pub fn last_event_id(&self) -> u64 {
        self.last_event_id
    }

    /// The state at block `n` (the head when `None`).
    pub fn state_at(&self, n: Option<u64>) -> Result<StateAt, BlockError> {
        let head = self.head_block().ok_or(BlockError::Empty)?;
        let n = n.unwrap_or(head);
        if n > head {
            return Err(BlockError::AboveHead { block: n, head });
        }
        let first = self.first_block.unwrap_or(0);
        if n < first {
            return Err(BlockError::BelowFirst { block: n, first });
        }
        if n == head {
            return Ok(StateAt::Ready(Box::new(self.head.clone()), self.is_confirmed(n)));
        }
        if self.is_confirmed(n) {
            return Ok(StateAt::Cold(self.root.to_path_buf(), (*self.u).clone(), n));
        }
        let mut st = self.head.clone();
        for e in self.hot.iter().rev().take_while(|e| e.number > n) {
            e.journal.undo(&mut st);
        }
        // The buffer holds every block from the confirmed one to the head: n is in it.
        st.block = n;
        st.block_hash = self.hot.iter().find(|e| e.number == n).map_or(B256::ZERO, |e| e.hash);
        Ok(StateAt::Ready(Box::new(st), false))
    }
}

/// The stream's history and the next event id.
#[derive(Debug)]
struct StreamLog {
    history: VecDeque<Arc<StreamEvent>>,
    cap: usize,
    next_id: u64,
}

impl StreamLog {
    fn since(&self, last_id: u64) -> Result<Vec<Arc<StreamEvent>>, u64> {
        let oldest = self.history.front().map_or(self.next_id, |e| e.id);
        // Older than the history, or newer than any event here (a cursor from another
        // instance, or from before a restart): the client must reload the state.
        if last_id + 1 < oldest || last_id >= self.next_id {
            return Err(oldest);
        }
        Ok(self.history.iter().filter(|e| e.id > last_id).cloned().collect())
    }
}

/// What the writer and the readers share: the published view, the stream, and whether the
/// writer died.
#[derive(Debug)]
struct Hub {
    view: ArcSwap<View>,
    /// Held only to publish (a few pointer moves) and to subscribe, so that a new subscriber
    /// gets a view and the events after it with no gap and no duplicate.
    stream: Mutex<StreamLog>,
    tx: broadcast::Sender<Arc<StreamEvent>>,
    writer_failed: AtomicBool,
}

impl Hub {
    fn stream(&self) -> std::sync::MutexGuard<'_, StreamLog> {
        // The critical sections cannot panic; a poisoned mutex still holds a consistent log.
        self.stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A reader's handle on the live state: the newest [`View`], and the stream. Cheap to clone;
/// never blocks on the writer.
#[derive(Debug, Clone)]
pub struct LiveReader {
    hub: Arc<Hub>,
}

/// What a new stream subscriber gets: the view its snapshot comes from, the events after its
/// cursor, and a receiver of the events to come (no gap, no duplicate).
#[derive(Debug)]
pub struct Subscription {
    /// The newest view when subscribing.
    pub view: Arc<View>,
    /// The events after the cursor still in the history (empty without a cursor: the view
    /// includes everything up to its `last_event_id`).
    pub missed: Vec<Arc<StreamEvent>>,
    /// The events to come.
    pub rx: broadcast::Receiver<Arc<StreamEvent>>,
}

impl LiveReader {
    /// The newest published view.
    pub fn view(&self) -> Arc<View> {
        self.hub.view.load_full()
    }

    /// Whether the writer died (a bug: it panicked): the view no longer moves.
    pub fn writer_failed(&self) -> bool {
        self.hub.writer_failed.load(Ordering::Acquire)
    }

    /// Subscribes to the stream after `last_id` (after the view when `None`). `Err(oldest)`
    /// when `last_id` is older than the history: the client must reload the state.
    pub fn subscribe(&self, last_id: Option<u64>) -> Result<Subscription, u64> {
        let log = self.hub.stream();
        let view = self.hub.view.load_full();
        let missed = log.since(last_id.unwrap_or(view.last_event_id))?;
        Ok(Subscription { view, missed, rx: self.hub.tx.subscribe() })
    }

    /// The events after `last_id` still in the history (a lagging client catches up from it);
    /// `Err` when some were dropped already.
    pub fn since(&self, last_id: u64) -> Result<Vec<Arc<StreamEvent>>, u64> {
        self.hub.stream().since(last_id)
    }
}

/// The writer of the live state (see the module docs). One thread owns it and applies the bus;
/// after every update it publishes an immutable [`View`] for the readers ([`Self::reader`]).
#[derive(Debug)]
pub struct LiveState {
    u: Arc<UniswapV3>,
    folder: Folder,
    hot: VecDeque<Arc<HotEntry>>,
    confirmed: Option<(u64, B256)>,
    first_block: Option<u64>,
    /// The data directory (datasets are opened when read: the cold tier grows).
    root: Arc<std::path::Path>,
    chain_id: u64,
    snapshot_interval: u64,
    degraded: bool,
    received: std::time::Instant,
    /// Events of the update being applied, published with its view.
    pending: Vec<StreamEvent>,
    hub: Arc<Hub>,
}

/// A snapshot to write (by the writer thread, after publishing).
#[derive(Debug)]
pub struct PendingSnapshot {
    /// The data directory.
    pub root: std::path::PathBuf,
    /// The state, as of its block.
    pub state: UniswapState,
}

impl LiveState {
    /// Loads the state at the end of the cold tier (newest snapshot plus a fold, writing the
    /// snapshots missing on the way every `snapshot_interval` blocks; 0 writes none). Blocking.
    pub fn load(
        ds: Dataset,
        u: UniswapV3,
        snapshot_interval: u64,
    ) -> tidewater_storage::Result<Self> {
        Self::load_for(ds, u, snapshot_interval, None)
    }

    /// Like [`Self::load`], publishing to the readers of `reader` (their stream goes on, ids
    /// increasing) when given: how `run` swaps the state it served during the backfill for the
    /// one that follows the tail.
    pub fn load_for(
        ds: Dataset,
        u: UniswapV3,
        snapshot_interval: u64,
        reader: Option<&LiveReader>,
    ) -> tidewater_storage::Result<Self> {
        if u.factory != Address::ZERO {
            crate::pool_state::check_coverage(&ds, &u)?;
        }
        let end = ds.manifest().last().map(|c| (c.end, c.last_block_hash));
        let first_block = ds.manifest().chunks().first().map(|c| c.start);
        let state = match &end {
            Some((n, _)) => {
                let interval = Some(snapshot_interval).filter(|i| *i > 0);
                match cold_state_at(&ds, &u, *n, interval) {
                    Ok(s) => s,
                    // The snapshot directory may be read-only for a reader: fold without.
                    Err(tidewater_storage::Error::Io { .. }) if interval.is_some() => {
                        tracing::warn!("could not write state snapshots; continuing without");
                        cold_state_at(&ds, &u, *n, None)?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => UniswapState::default(),
        };
        let root: Arc<std::path::Path> = ds.root().into();
        let u = Arc::new(u);
        let hub = match reader {
            Some(r) => r.hub.clone(),
            None => {
                let (tx, _) = broadcast::channel(STREAM_CAPACITY);
                let view = View {
                    head: UniswapState::default(),
                    hot: Arc::new([]),
                    confirmed: None,
                    first_block: None,
                    degraded: false,
                    root: root.clone(),
                    u: u.clone(),
                    chain_id: ds.identity().chain_id,
                    last_event_id: 0,
                };
                Arc::new(Hub {
                    view: ArcSwap::from_pointee(view),
                    stream: Mutex::new(StreamLog {
                        history: VecDeque::new(),
                        cap: DEFAULT_STREAM_HISTORY,
                        next_id: 1,
                    }),
                    tx,
                    writer_failed: AtomicBool::new(false),
                })
            }
        };
        let before = reader.map(|r| r.view());
        let mut live = Self {
            folder: Folder::with_state(&u, state),
            u,
            hot: VecDeque::new(),
            confirmed: end,
            first_block,
            root,
            chain_id: ds.identity().chain_id,
            snapshot_interval,
            degraded: false,
            received: std::time::Instant::now(),
            pending: Vec::new(),
            hub,
        };
        if let Some(before) = before {
            live.hand_over(&before);
        }
        live.publish();
        Ok(live)
    }

    /// The readers' stream goes on from `before` (the view of the state this one replaces:
    /// a standby's that now leads): its unconfirmed blocks above our confirmed one are
    /// reverted, newest first (the new writer applies again those still canonical), and the
    /// blocks it held that we hold confirmed are confirmed. A client folding the stream ends
    /// at this state.
    fn hand_over(&mut self, before: &View) {
        let confirmed = self.confirmed.map(|c| c.0);
        for e in before.hot.iter().rev().filter(|e| confirmed.is_none_or(|c| e.number > c)) {
            let ev = self.changes(
                &e.journal,
                Status::Reverted,
                e.number,
                e.hash,
                e.block.header.parent_hash,
                Some(e.block.clone()),
            );
            self.emit(ev);
        }
        if let Some((n, hash)) = self.confirmed {
            if !before.hot.is_empty() && before.confirmed.is_none_or(|(b, _)| b < n) {
                let touched = before
                    .hot
                    .iter()
                    .filter(|e| e.number <= n)
                    .flat_map(|e| e.touched.iter().copied())
                    .collect();
                self.emit_confirmed(n, hash, touched);
            }
        }
    }

    /// Keeps the newest `events` stream events for reconnecting clients and the publisher
    /// (default [`DEFAULT_STREAM_HISTORY`]; at least one).
    pub fn set_stream_history(&self, events: usize) {
        let mut log = self.hub.stream();
        log.cap = events.max(1);
        while log.history.len() > log.cap {
            log.history.pop_front();
        }
    }

    /// A handle for readers.
    pub fn reader(&self) -> LiveReader {
        LiveReader { hub: self.hub.clone() }
    }

    /// The data directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The head state (the writer's copy).
    pub fn head(&self) -> &UniswapState {
        self.folder.state()
    }

    /// The newest applied block, if any.
    pub fn head_block(&self) -> Option<u64> {
        self.hot.back().map(|e| e.number).or(self.confirmed.map(|c| c.0))
    }

    /// The newest confirmed block, if any.
    pub fn confirmed(&self) -> Option<(u64, B256)> {
        self.confirmed
    }

    fn is_confirmed(&self, n: u64) -> bool {
        self.confirmed.is_some_and(|c| n <= c.0)
    }

    /// Whether the state lost track of the chain.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Marks the state as having missed updates, and publishes that.
    pub fn set_degraded(&mut self) {
        self.degraded = true;
        self.publish();
    }

    /// Publishes the writer's state as the readers' view, with the events of the update.
    fn publish(&mut self) {
        let mut view = View {
            head: self.folder.state().clone(),
            hot: self.hot.iter().cloned().collect(),
            confirmed: self.confirmed,
            first_block: self.first_block,
            degraded: self.degraded,
            root: self.root.clone(),
            u: self.u.clone(),
            chain_id: self.chain_id,
            last_event_id: 0,
        };
        let mut log = self.hub.stream();
        for mut ev in self.pending.drain(..) {
            ev.id = log.next_id;
            log.next_id += 1;
            let ev = Arc::new(ev);
            if log.history.len() >= log.cap {
                log.history.pop_front();
            }
            log.history.push_back(ev.clone());
            let _ = self.hub.tx.send(ev);
        }
        view.last_event_id = log.next_id - 1;
        self.hub.view.store(Arc::new(view));
    }

    fn emit(&mut self, ev: StreamEvent) {
        self.pending.push(ev);
    }

    /// Blocks through `number` are confirmed (`touched`: the pools of the blocks confirmed).
    fn emit_confirmed(&mut self, number: u64, hash: B256, touched: BTreeSet<Address>) {
        self.emit(StreamEvent {
            id: 0,
            status: Status::Confirmed,
            number,
            hash,
            parent_hash: B256::ZERO,
            pools: vec![],
            ticks: vec![],
            positions: vec![],
            touched,
            received: self.received,
            block: None,
        });
    }

    fn changes(
        &self,
        j: &Journal,
        status: Status,
        number: u64,
        hash: B256,
        parent: B256,
        block: Option<Arc<HotBlock>>,
    ) -> StreamEvent {
        let st = self.folder.state();
        let mut touched = BTreeSet::new();
        let pools: Vec<PoolState> = j
            .pools
            .keys()
            .filter_map(|a| {
                touched.insert(*a);
                st.pools.get(a).copied()
            })
            .collect();
        let ticks = j
            .ticks
            .keys()
            .map(|(a, t)| {
                touched.insert(*a);
                (*a, *t, st.ticks.get(a).and_then(|m| m.get(t)).copied().unwrap_or_default())
            })
            .collect();
        let positions = j
            .positions
            .iter()
            .map(|(id, before)| {
                let now = st.positions.get(id).copied();
                touched.extend(now.and_then(|p| p.pool));
                touched.extend(before.and_then(|p| p.pool));
                (*id, now, now.and_then(|p| p.pool).or(before.and_then(|p| p.pool)))
            })
            .collect();
        StreamEvent {
            id: 0,
            status,
            number,
            hash,
            parent_hash: parent,
            pools,
            ticks,
            positions,
            touched,
            received: self.received,
            block,
        }
    }

    /// Applies one bus update and publishes the result. Returns a snapshot to write when the
    /// confirmed height crossed a multiple of the snapshot interval. Blocking only on a deep
    /// reorg (reload from cold), during which readers keep the previous view.
    pub fn apply(&mut self, u: &ChainUpdate) -> tidewater_storage::Result<Option<PendingSnapshot>> {
        let r = self.apply_unpublished(u);
        self.publish();
        r
    }

    fn apply_unpublished(
        &mut self,
        u: &ChainUpdate,
    ) -> tidewater_storage::Result<Option<PendingSnapshot>> {
        self.received = std::time::Instant::now();
        match u {
            ChainUpdate::Applied(b) => {
                let tip = self.hot.back().map(|e| (e.number, e.hash)).or(self.confirmed);
                let extends = match tip {
                    Some((n, h)) => b.header.number == n + 1 && b.header.parent_hash == h,
                    None => true,
                };
                if !extends {
                    // Our view and the tail's differ (a deep reorg rewrote the cold tier under
                    // us): start again from the cold tier.
                    self.reload()?;
                    if self.head_block().is_some_and(|h| h >= b.header.number) {
                        return Ok(None);
                    }
                    let tip = self.hot.back().map(|e| (e.number, e.hash)).or(self.confirmed);
                    if tip
                        .is_some_and(|(n, h)| b.header.number != n + 1 || b.header.parent_hash != h)
                    {
                        tracing::error!(
                            block = b.header.number,
                            "the live state lost track of the chain"
                        );
                        self.degraded = true;
                        return Ok(None);
                    }
                }
                self.apply_block(b)?;
                Ok(None)
            }
            ChainUpdate::Reverted(b) => {
                if self.hot.back().is_some_and(|e| e.hash == b.header.hash) {
                    if let Some(e) = self.hot.pop_back() {
                        e.journal.undo(self.folder.state_mut());
                        let parent = b.header.parent_hash;
                        self.folder.end_block(b.header.number.saturating_sub(1), parent);
                        let ev = self.changes(
                            &e.journal,
                            Status::Reverted,
                            e.number,
                            e.hash,
                            parent,
                            Some(e.block.clone()),
                        );
                        self.emit(ev);
                    }
                } else if self.is_confirmed(b.header.number) {
                    self.deep_revert(b)?;
                } else {
                    // Already undone by the reload of an earlier (newer) deep revert: report it,
                    // so every orphaned block a client saw is reverted, with no state change.
                    let ev = self.changes(
                        &Journal::default(),
                        Status::Reverted,
                        b.header.number,
                        b.header.hash,
                        b.header.parent_hash,
                        Some(b.clone()),
                    );
                    self.emit(ev);
                }
                Ok(None)
            }
            ChainUpdate::Confirmed { number, hash } => Ok(self.confirm(*number, *hash)),
        }
    }

    /// Folds a block. An event the state cannot take leaves the state as it was before the
    /// block and marks it degraded (`/ready` says 503): a wrong number is never served.
    fn apply_block(&mut self, b: &Arc<HotBlock>) -> Result<(), FoldError> {
        let mut j = Journal::default();
        // A block from the bus carries its events decoded (the tail's tables): fold those. A
        // block read back from the cold tier (`catch_up_with_cold`) has its raw logs only.
        let folded = if b.events.is_empty() {
            b.logs.iter().try_for_each(|l| self.folder.apply(&RawLog::from(l), Some(&mut j)))
        } else {
            crate::events::from_batches(&b.events)
                .map_err(|e| FoldError { block: b.header.number, what: e.to_string() })
                .and_then(|events| {
                    events.iter().try_for_each(|e| self.folder.apply_event(e, Some(&mut j)))
                })
        };
        if let Err(e) = folded {
            j.undo(self.folder.state_mut());
            self.degraded = true;
            tracing::error!(error = %e, "live state: an event the state cannot take; marking it degraded");
            return Err(e);
        }
        self.folder.end_block(b.header.number, b.header.hash);
        let ev = self.changes(
            &j,
            Status::Pending,
            b.header.number,
            b.header.hash,
            b.header.parent_hash,
            Some(b.clone()),
        );
        self.hot.push_back(Arc::new(HotEntry {
            number: b.header.number,
            hash: b.header.hash,
            block: b.clone(),
            touched: ev.touched.clone(),
            journal: j,
        }));
        if self.first_block.is_none() {
            self.first_block = Some(b.header.number);
        }
        self.emit(ev);
        Ok(())
    }

    fn confirm(&mut self, number: u64, hash: B256) -> Option<PendingSnapshot> {
        if self.is_confirmed(number) {
            return None;
        }
        let prev = self.confirmed.map(|c| c.0);
        let mut snap = None;
        if let Some(q) = number.checked_div(self.snapshot_interval) {
            let mark = q * self.snapshot_interval;
            if prev.is_none_or(|p| p < mark) && mark > 0 {
                if let Some(at) = self.hot.iter().find(|e| e.number == mark) {
                    let mut st = self.head().clone();
                    for e in self.hot.iter().rev().take_while(|e| e.number > mark) {
                        e.journal.undo(&mut st);
                    }
                    st.block = mark;
                    st.block_hash = at.hash;
                    snap = Some(st);
                }
            }
        }
        let mut touched = BTreeSet::new();
        while self.hot.front().is_some_and(|e| e.number <= number) {
            if let Some(e) = self.hot.pop_front().filter(|e| e.number == number) {
                touched = e.touched.clone();
            }
        }
        self.confirmed = Some((number, hash));
        self.emit_confirmed(number, hash, touched);
        snap.map(|state| PendingSnapshot { root: self.root.to_path_buf(), state })
    }

    /// A confirmed block was reverted: the tail rolled the cold tier back. Reload the state from
    /// it and report the difference with the revert of the newest such block.
    fn deep_revert(&mut self, b: &Arc<HotBlock>) -> tidewater_storage::Result<()> {
        let before = self.folder.state().clone();
        self.reload()?;
        let after = self.folder.state();
        let mut j = Journal::default();
        for (a, p) in &before.pools {
            if after.pools.get(a) != Some(p) {
                j.pools.insert(*a, Some(*p));
            }
        }
        for a in after.pools.keys().filter(|a| !before.pools.contains_key(*a)) {
            j.pools.insert(*a, None);
        }
        let keys: BTreeSet<(Address, i32)> = before
            .ticks
            .iter()
            .chain(after.ticks.iter())
            .flat_map(|(a, m)| m.keys().map(move |t| (*a, *t)))
            .collect();
        for (a, t) in keys {
            let old = before.ticks.get(&a).and_then(|m| m.get(&t)).copied();
            if old != after.ticks.get(&a).and_then(|m| m.get(&t)).copied() {
                j.ticks.insert((a, t), old);
            }
        }
        let ids: BTreeSet<U256> =
            before.positions.keys().chain(after.positions.keys()).copied().collect();
        for id in ids {
            let old = before.positions.get(&id).copied();
            if old != after.positions.get(&id).copied() {
                j.positions.insert(id, old);
            }
        }
        let ev = self.changes(
            &j,
            Status::Reverted,
            b.header.number,
            b.header.hash,
            b.header.parent_hash,
            Some(b.clone()),
        );
        self.emit(ev);
        Ok(())
    }

    /// Starts again from the cold tier (the hot journals are dropped). Readers keep the
    /// previous view until the update that caused it is published.
    fn reload(&mut self) -> tidewater_storage::Result<()> {
        let ds = Dataset::open(&self.root)?;
        let end = ds.manifest().last().map(|c| c.end);
        let state = match end {
            Some(n) => cold_state_at(&ds, &self.u, n, None)?,
            None => UniswapState::default(),
        };
        self.confirmed = match end {
            Some(n) => Some((n, cold_block_hash(&ds, n)?.unwrap_or_default())),
            None => None,
        };
        self.first_block = ds.manifest().chunks().first().map(|c| c.start);
        self.folder = Folder::with_state(&self.u, state);
        self.hot.clear();
        tracing::warn!(confirmed = ?self.confirmed.map(|c| c.0), "live state reloaded from the cold tier");
        Ok(())
    }

    /// Brings a read-only state up to date with its data directory (another process writes
    /// it): newly committed blocks are applied and confirmed at once; a cold tier that no
    /// longer holds our newest block (the writer rolled back a deep reorg) is reloaded and
    /// reported as a revert. Returns the blocks applied. Blocking I/O; readers keep reading.
    pub fn catch_up_with_cold(&mut self) -> tidewater_storage::Result<usize> {
        let ds = Dataset::open(&self.root)?;
        let Some(last) = ds.manifest().last() else { return Ok(0) };
        let confirmed = self.confirmed;
        if let Some((n, h)) = confirmed {
            if cold_block_hash(&ds, n)? != Some(h) {
                let header = tidewater_primitives::Header {
                    number: n,
                    hash: h,
                    parent_hash: B256::ZERO,
                    timestamp: 0,
                    logs_bloom: Default::default(),
                };
                let b = Arc::new(HotBlock { header, logs: vec![], events: Default::default() });
                let r = self.deep_revert(&b);
                self.publish();
                r?;
                return Ok(0);
            }
        }
        let after = confirmed.map_or(0, |c| c.0 + 1);
        if confirmed.is_some() && last.end < after {
            return Ok(0);
        }
        let chunks: Vec<_> =
            ds.manifest().chunks().iter().filter(|c| c.end >= after).cloned().collect();
        let mut applied = 0;
        for (header, logs) in tidewater_storage::cold_blocks(&self.root, &chunks)? {
            if confirmed.is_some() && header.number < after {
                continue;
            }
            let (number, hash) = (header.number, header.hash);
            let b = Arc::new(HotBlock { header, logs, events: Default::default() });
            // Cold blocks are final and come in order, but need not link: a backfilled range
            // has rows only for its blocks with logs and the blocks whose headers were checked.
            let folded = self.apply_block(&b);
            self.publish();
            folded?;
            if let Some(s) = self.apply(&ChainUpdate::Confirmed { number, hash })? {
                write_pending(&s);
            }
            applied += 1;
        }
        Ok(applied)
    }
}

/// Writes a snapshot (blocking), logging rather than failing: snapshots only speed up lookups.
pub fn write_pending(s: &PendingSnapshot) {
    match crate::pool_state::write_snapshot(&s.root, &s.state) {
        Ok(true) => tracing::debug!(block = s.state.block, "state snapshot written"),
        Ok(false) => {
            tracing::debug!(
                block = s.state.block,
                "state snapshot skipped: its block was rolled back"
            )
        }
        Err(e) => tracing::warn!(block = s.state.block, error = %e, "writing a state snapshot"),
    }
}

/// Marks the writer failed when its thread unwinds, so that readers answer 503 and `/ready`
/// says not ready instead of serving a state that no longer moves.
struct FailOnUnwind(Arc<Hub>);

impl Drop for FailOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.writer_failed.store(true, Ordering::Release);
            tracing::error!("the live state's writer panicked; the state is no longer served");
        }
    }
}

/// Folds the bus into `live` on a thread of its own (which owns it) until the bus closes.
/// Snapshots are written on this thread, after the view is published.
pub fn spawn_consumer(
    mut live: LiveState,
    mut rx: broadcast::Receiver<ChainUpdate>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let guard = FailOnUnwind(live.hub.clone());
    std::thread::Builder::new().name("tidewater-live".into()).spawn(move || {
        let _guard = guard;
        loop {
            match rx.blocking_recv() {
                Ok(u) => match live.apply(&u) {
                    Ok(Some(snap)) => write_pending(&snap),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "live state: reading the cold tier failed");
                        live.set_degraded();
                    }
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!(
                        missed = n,
                        "live state fell behind the bus; marking it not ready"
                    );
                    live.set_degraded();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_primitives::Header;

    fn empty_state() -> (tempfile::TempDir, LiveState) {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = tidewater_storage::Identity::new(1, "0x00".into(), json!({}), vec![]);
        drop(
            tidewater_storage::DatasetWriter::open(dir.path(), &id, &Default::default(), None)
                .expect("dataset"),
        );
        let ds = Dataset::open(dir.path()).expect("open");
        let u =
            UniswapV3 { factory: Address::ZERO, position_manager: None, factory_start_block: 0 };
        let live = LiveState::load(ds, u, 0).expect("load");
        (dir, live)
    }

    fn block(number: u64, parent: B256) -> Arc<HotBlock> {
        let header = Header {
            number,
            hash: B256::with_last_byte(number as u8 + 1),
            parent_hash: parent,
            timestamp: number,
            logs_bloom: Default::default(),
        };
        Arc::new(HotBlock { header, logs: vec![], events: Default::default() })
    }

    #[test]
    fn a_view_never_changes_under_its_reader() {
        let (_dir, mut live) = empty_state();
        let reader = live.reader();
        let before = reader.view();
        let b1 = block(1, B256::ZERO);
        live.apply(&ChainUpdate::Applied(b1.clone())).expect("apply");
        assert_eq!(before.head_block(), None, "a view taken before the update stays as it was");
        let after = reader.view();
        assert_eq!(after.head_block(), Some(1));
        assert_eq!(after.hot_len(), 1);
        assert_eq!(after.last_event_id(), 1);
        live.apply(&ChainUpdate::Reverted(b1)).expect("revert");
        assert_eq!(after.head_block(), Some(1));
        assert_eq!(reader.view().head_block(), None);
        assert_eq!(reader.view().last_event_id(), 2);
    }

    #[test]
    fn a_subscriber_gets_every_event_after_its_view_once() {
        let (_dir, mut live) = empty_state();
        let reader = live.reader();
        live.apply(&ChainUpdate::Applied(block(1, B256::ZERO))).expect("apply");
        let mut sub = reader.subscribe(None).expect("subscribe");
        assert!(sub.missed.is_empty());
        assert_eq!(sub.view.last_event_id(), 1);
        live.apply(&ChainUpdate::Applied(block(2, B256::with_last_byte(2)))).expect("apply");
        let ev = sub.rx.try_recv().expect("the next event");
        assert_eq!((ev.id, ev.number, ev.status), (2, 2, Status::Pending));
        let again = reader.subscribe(Some(0)).expect("from the start");
        // A cursor this instance never gave (another instance's, or before a restart) is a
        // resync, not a silent wait for ids to catch up.
        assert!(reader.subscribe(Some(1_000)).is_err());
        assert_eq!(again.missed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
        // A reload for the backfill-to-tail hand-over keeps the ids increasing.
        let ds = Dataset::open(live.root()).expect("open");
        let mut fresh = LiveState::load_for(ds, (*live.u).clone(), 0, Some(&reader)).expect("load");
        fresh.apply(&ChainUpdate::Applied(block(1, B256::ZERO))).expect("apply");
        assert_eq!(sub.rx.try_recv().expect("event").id, 3);
    }

    #[test]
    fn a_hand_over_reverts_the_unconfirmed_blocks_the_new_state_does_not_hold() {
        let (_dir, mut live) = empty_state();
        let reader = live.reader();
        live.apply(&ChainUpdate::Applied(block(1, B256::ZERO))).expect("apply");
        live.apply(&ChainUpdate::Applied(block(2, B256::with_last_byte(2)))).expect("apply");
        let sub = reader.subscribe(None).expect("subscribe");
        // A standby that takes over: the new writer's state starts at the cold tier (empty).
        let ds = Dataset::open(live.root()).expect("open");
        let fresh = LiveState::load_for(ds, (*live.u).clone(), 0, Some(&reader)).expect("load");
        let mut rx = sub.rx;
        let got: Vec<_> =
            std::iter::from_fn(|| rx.try_recv().ok()).map(|e| (e.id, e.number, e.status)).collect();
        assert_eq!(got, vec![(3, 2, Status::Reverted), (4, 1, Status::Reverted)]);
        assert_eq!(reader.view().head_block(), None);
        assert_eq!(reader.view().last_event_id(), 4);
        drop(fresh);
    }

    #[test]
    fn a_writer_that_panics_is_seen_by_readers() {
        let (_dir, live) = empty_state();
        let reader = live.reader();
        assert!(!reader.writer_failed());
        let guard = FailOnUnwind(live.hub.clone());
        let r = std::thread::spawn(move || {
            let _guard = guard;
            let _live = live;
            panic!("a bug in the fold");
        })
        .join();
        assert!(r.is_err());
        assert!(reader.writer_failed(), "readers must see that the state stopped moving");
        // A writer that stops without a panic (the bus closed at shutdown) is not a failure.
        let (_dir2, live2) = empty_state();
        let reader2 = live2.reader();
        let (tx, rx) = broadcast::channel(4);
        let h = spawn_consumer(live2, rx).expect("thread");
        drop(tx);
        h.join().expect("clean exit");
        assert!(!reader2.writer_failed());
    }
}
