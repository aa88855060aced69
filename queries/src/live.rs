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
//! Invariant: the head state equals a fold of the canonical chain through the newest applied
//! block; every event in the history has a strictly increasing id.

use crate::pool_state::{
    cold_block_hash, cold_state_at, Folder, Journal, PoolState, Position, RawLog, TickLiquidity,
    UniswapState,
};
use alloy_primitives::{Address, B256, U256};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use tidewater_chain::{ChainUpdate, HotBlock, UniswapV3};
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
    /// Positions that changed, after the change (None: burned or never existed).
    pub positions: Vec<(U256, Option<Position>)>,
    /// Pools this block touched (its own state, ticks or positions).
    pub touched: BTreeSet<Address>,
    /// When the update reached the live state (for the stream delay metric).
    pub received: std::time::Instant,
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
            "positions": self.positions.iter().filter(|(_, p)| p.is_none_or(|p| p.pool.is_none_or(|a| keep(&a)))).map(|(id, p)| match p {
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
    /// A confirmed block: fold it from the cold tier ([`cold_state_at`]) outside the lock
    /// (open the dataset at this root then: the cold tier may have grown).
    Cold(std::path::PathBuf, UniswapV3),
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

/// The live state (see the module docs). Callers keep it behind a lock: updates take it
/// mutably, queries read it.
#[derive(Debug)]
pub struct LiveState {
    u: UniswapV3,
    folder: Folder,
    hot: VecDeque<HotEntry>,
    confirmed: Option<(u64, B256)>,
    first_block: Option<u64>,
    /// The data directory (datasets are opened when read: the cold tier grows).
    root: std::path::PathBuf,
    chain_id: u64,
    history: VecDeque<Arc<StreamEvent>>,
    history_cap: usize,
    next_id: u64,
    tx: broadcast::Sender<Arc<StreamEvent>>,
    snapshot_interval: u64,
    degraded: bool,
    received: std::time::Instant,
}

/// A snapshot to write (outside the lock).
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
        let confirmed = end;
        let (tx, _) = broadcast::channel(STREAM_CAPACITY);
        Ok(Self {
            folder: Folder::with_state(&u, state),
            u,
            hot: VecDeque::new(),
            confirmed,
            first_block,
            root: ds.root().to_path_buf(),
            chain_id: ds.identity().chain_id,
            history: VecDeque::new(),
            history_cap: DEFAULT_STREAM_HISTORY,
            next_id: 1,
            tx,
            snapshot_interval,
            degraded: false,
            received: std::time::Instant::now(),
        })
    }

    /// The head state.
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

    /// The dataset's chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The data directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Whether the state lost track of the chain (a missed update); `/ready` says so.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Marks the state as having missed updates.
    pub fn set_degraded(&mut self) {
        self.degraded = true;
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
            return Ok(StateAt::Ready(Box::new(self.head().clone()), self.is_confirmed(n)));
        }
        if self.is_confirmed(n) {
            return Ok(StateAt::Cold(self.root.clone(), self.u.clone()));
        }
        let mut st = self.head().clone();
        for e in self.hot.iter().rev().take_while(|e| e.number > n) {
            e.journal.undo(&mut st);
        }
        let at = self.hot.iter().find(|e| e.number == n).expect("invariant: n is in the buffer");
        st.block = n;
        st.block_hash = at.hash;
        Ok(StateAt::Ready(Box::new(st), false))
    }

    /// Subscribes to the stream: the events after `last_id` still in the history, and a
    /// receiver of the ones to come (no gap, no duplicate). `Err` when `last_id` is older than
    /// the history: the client must reload the state.
    #[allow(clippy::type_complexity)]
    pub fn subscribe(
        &self,
        last_id: Option<u64>,
    ) -> Result<(Vec<Arc<StreamEvent>>, broadcast::Receiver<Arc<StreamEvent>>), u64> {
        let missed = match last_id {
            Some(last) => self.since(last)?,
            None => vec![],
        };
        Ok((missed, self.tx.subscribe()))
    }

    /// The events after `last_id` still in the history (a lagging client catches up from it);
    /// `Err` when some were dropped already.
    pub fn since(&self, last_id: u64) -> Result<Vec<Arc<StreamEvent>>, u64> {
        let oldest = self.history.front().map_or(self.next_id, |e| e.id);
        if last_id + 1 < oldest {
            return Err(oldest);
        }
        Ok(self.history.iter().filter(|e| e.id > last_id).cloned().collect())
    }

    /// The id of the newest event (0 before any).
    pub fn last_event_id(&self) -> u64 {
        self.next_id - 1
    }

    fn emit(&mut self, mut ev: StreamEvent) {
        ev.id = self.next_id;
        self.next_id += 1;
        let ev = Arc::new(ev);
        if self.history.len() == self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    fn changes(
        &self,
        j: &Journal,
        status: Status,
        number: u64,
        hash: B256,
        parent: B256,
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
                (*id, now)
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
        }
    }

    /// Applies one bus update. Returns a snapshot to write when the confirmed height crossed a
    /// multiple of the snapshot interval. Blocking only on a deep reorg (reload from cold).
    pub fn apply(&mut self, u: &ChainUpdate) -> tidewater_storage::Result<Option<PendingSnapshot>> {
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
                    let e = self.hot.pop_back().expect("invariant: checked above");
                    e.journal.undo(self.folder.state_mut());
                    let parent = b.header.parent_hash;
                    self.folder.end_block(b.header.number.saturating_sub(1), parent);
                    let ev = self.changes(&e.journal, Status::Reverted, e.number, e.hash, parent);
                    self.emit(ev);
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
                    );
                    self.emit(ev);
                }
                Ok(None)
            }
            ChainUpdate::Confirmed { number, hash } => self.confirm(*number, *hash),
        }
    }

    /// Folds a block. An event the state cannot take leaves the state as it was before the
    /// block and marks it degraded (`/ready` says 503): a wrong number is never served.
    fn apply_block(&mut self, b: &Arc<HotBlock>) -> Result<(), crate::pool_state::FoldError> {
        let mut j = Journal::default();
        for l in &b.logs {
            if let Err(e) = self.folder.apply(&RawLog::from(l), Some(&mut j)) {
                j.undo(self.folder.state_mut());
                self.degraded = true;
                tracing::error!(error = %e, "live state: an event the state cannot take; marking it degraded");
                return Err(e);
            }
        }
        self.folder.end_block(b.header.number, b.header.hash);
        let ev =
            self.changes(&j, Status::Pending, b.header.number, b.header.hash, b.header.parent_hash);
        self.hot.push_back(HotEntry {
            number: b.header.number,
            hash: b.header.hash,
            block: b.clone(),
            touched: ev.touched.clone(),
            journal: j,
        });
        if self.first_block.is_none() {
            self.first_block = Some(b.header.number);
        }
        self.emit(ev);
        Ok(())
    }

    fn confirm(
        &mut self,
        number: u64,
        hash: B256,
    ) -> tidewater_storage::Result<Option<PendingSnapshot>> {
        if self.is_confirmed(number) {
            return Ok(None);
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
            let e = self.hot.pop_front().expect("invariant: checked above");
            if e.number == number {
                touched = e.touched;
            }
        }
        self.confirmed = Some((number, hash));
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
        });
        Ok(snap.map(|state| PendingSnapshot { root: self.root.clone(), state }))
    }

    /// A confirmed block was reverted: the tail rolled the cold tier back. Reload the state from
    /// it and report the difference with the revert of the newest such block.
    fn deep_revert(&mut self, b: &HotBlock) -> tidewater_storage::Result<()> {
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
            .chain(&after.ticks)
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
        );
        self.emit(ev);
        Ok(())
    }

    /// Starts again from the cold tier (the hot journals are dropped).
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
}

/// Writes a snapshot (blocking), logging rather than failing: snapshots only speed up lookups.
pub fn write_pending(s: &PendingSnapshot) {
    match crate::pool_state::write_snapshot(&s.root, &s.state) {
        Ok(()) => tracing::debug!(block = s.state.block, "state snapshot written"),
        Err(e) => tracing::warn!(block = s.state.block, error = %e, "writing a state snapshot"),
    }
}

/// Folds the bus into `live` on a thread of its own until the bus closes. Snapshots are written
/// on this thread, outside the lock.
pub fn spawn_consumer(
    live: Arc<std::sync::RwLock<LiveState>>,
    mut rx: broadcast::Receiver<ChainUpdate>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("tidewater-live".into()).spawn(move || loop {
        match rx.blocking_recv() {
            Ok(u) => {
                let res = live.write().expect("invariant: live lock not poisoned").apply(&u);
                match res {
                    Ok(Some(snap)) => write_pending(&snap),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "live state: reading the cold tier failed");
                        live.write().expect("invariant: live lock not poisoned").set_degraded();
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(missed = n, "live state fell behind the bus; marking it not ready");
                live.write().expect("invariant: live lock not poisoned").set_degraded();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    })
}

impl LiveState {
    /// Brings a read-only state up to date with its data directory (another process writes
    /// it): newly committed blocks are applied and confirmed at once; a cold tier that no
    /// longer holds our newest block (the writer rolled back a deep reorg) is reloaded and
    /// reported as a revert. Returns the blocks applied. Blocking I/O.
    pub fn catch_up_with_cold(live: &RwLock<Self>) -> tidewater_storage::Result<usize> {
        let (root, confirmed) = {
            let l = live.read().expect("invariant: live lock not poisoned");
            (l.root().to_path_buf(), l.confirmed)
        };
        let ds = Dataset::open(&root)?;
        let Some(last) = ds.manifest().last() else { return Ok(0) };
        if let Some((n, h)) = confirmed {
            if cold_block_hash(&ds, n)? != Some(h) {
                let header = tidewater_chain::Header {
                    number: n,
                    hash: h,
                    parent_hash: B256::ZERO,
                    timestamp: 0,
                    logs_bloom: Default::default(),
                };
                let b = HotBlock { header, logs: vec![], events: Default::default() };
                live.write().expect("invariant: live lock not poisoned").deep_revert(&b)?;
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
        for (header, logs) in tidewater_storage::cold_blocks(&root, &chunks)? {
            if confirmed.is_some() && header.number < after {
                continue;
            }
            let (number, hash) = (header.number, header.hash);
            let b = Arc::new(HotBlock { header, logs, events: Default::default() });
            let snap = {
                let mut l = live.write().expect("invariant: live lock not poisoned");
                l.apply(&ChainUpdate::Applied(b))?;
                l.apply(&ChainUpdate::Confirmed { number, hash })?
            };
            if let Some(s) = snap {
                write_pending(&s);
            }
            applied += 1;
        }
        Ok(applied)
    }
}
