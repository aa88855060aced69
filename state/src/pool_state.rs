//! Uniswap V3 state folded from typed events ([`crate::events`]: the hot blocks' decoded batches,
//! or the raw `logs` table of the cold tier decoded here) in (block_number, log_index) order,
//! exactly (integers only): per pool price, tick, liquidity and initialized ticks; per position manager
//! token its owner, pool, range and liquidity.
//!
//! The rules: `Initialize` sets price and tick; `Swap` carries the post-swap sqrtPriceX96,
//! liquidity and tick (the event's tick is used, never one recomputed from the price);
//! `Mint`/`Burn` move tick liquidity always and pool liquidity only when
//! tickLower <= tick < tickUpper; the position manager's `IncreaseLiquidity` takes its pool and
//! range from the pool `Mint` it made in the same transaction; `Transfer` moves ownership and a
//! transfer to the zero address burns the token.

use crate::events::{PoolEvent, Source, TypedEvent};
use alloy_primitives::{Address, B256, U256};
use arrow::array::{Array, BinaryArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use imbl::OrdMap;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tidewater_chain::UniswapV3;
use tidewater_primitives::schema;
use tidewater_storage::Dataset;
use tidewater_storage::{column, fixed};

/// Serializes an integer as an exact decimal string, written without an intermediate `String`
/// (JSON numbers lose precision above 2^53 in most clients).
pub fn dec<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Liquidity at one initialized tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TickLiquidity {
    /// Total liquidity referencing the tick.
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub liquidity_gross: u128,
    /// Liquidity added when the price crosses the tick upwards.
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub liquidity_net: i128,
}

/// One initialized tick as the API prints it.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct TickEntry {
    /// The tick.
    pub tick: i32,
    /// Its liquidity.
    #[serde(flatten)]
    pub liquidity: TickLiquidity,
}

/// One pool's scalar state (its ticks live in [`UniswapState::ticks`]). Serializes as the API
/// and `tidewater state` print it: big integers as decimal strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PoolState {
    /// Pool address.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub address: Address,
    /// token0.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub token0: Address,
    /// token1.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub token1: Address,
    /// Fee in hundredths of a bip.
    pub fee: u32,
    /// Tick spacing.
    pub tick_spacing: i32,
    /// sqrt(price) as Q64.96 (0 before Initialize).
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub sqrt_price_x96: U256,
    /// Current tick.
    pub tick: i32,
    /// In-range liquidity.
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub liquidity: u128,
}

impl PoolState {
    /// As a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("invariant: plain structs serialize")
    }
}

/// One position manager token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Position {
    /// Token id.
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub token_id: U256,
    /// Owner.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub owner: Address,
    /// Pool, once known.
    #[schema(value_type = Option<String>, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub pool: Option<Address>,
    /// Lower tick.
    pub tick_lower: i32,
    /// Upper tick.
    pub tick_upper: i32,
    /// Liquidity.
    #[serde(serialize_with = "dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    pub liquidity: u128,
}

impl Position {
    /// As a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("invariant: plain structs serialize")
    }
}

/// Initialized ticks of one pool, by tick.
pub type Ticks = OrdMap<i32, TickLiquidity>;

/// Initialized ticks in order, as the API prints them.
pub fn tick_entries(ticks: Option<&Ticks>) -> Vec<TickEntry> {
    ticks.into_iter().flatten().map(|(t, l)| TickEntry { tick: *t, liquidity: *l }).collect()
}

/// Ticks as a JSON list.
pub fn ticks_json(ticks: Option<&Ticks>) -> Value {
    serde_json::to_value(tick_entries(ticks)).expect("invariant: plain structs serialize")
}

/// The liquidity distribution: for each interval between consecutive initialized ticks,
/// (lower, upper, the liquidity active while the price is inside it: the prefix sum of
/// liquidityNet).
pub fn intervals(ticks: Option<&Ticks>) -> Vec<(i32, i32, i128)> {
    let mut out = Vec::new();
    let mut active: i128 = 0;
    let mut prev: Option<i32> = None;
    for (t, l) in ticks.into_iter().flatten() {
        if let Some(p) = prev {
            out.push((p, *t, active));
        }
        active += l.liquidity_net;
        prev = Some(*t);
    }
    out
}

/// The folded state as of `block`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UniswapState {
    /// Last block folded.
    pub block: u64,
    /// Its hash (zero when unknown, e.g. before any block).
    pub block_hash: B256,
    /// Pools by address.
    pub pools: OrdMap<Address, PoolState>,
    /// Initialized ticks by pool.
    pub ticks: OrdMap<Address, Ticks>,
    /// Positions by token id.
    pub positions: OrdMap<U256, Position>,
}

impl UniswapState {
    /// Everything as one JSON document (pools with their ticks, then positions).
    pub fn to_json(&self) -> Value {
        json!({
            "block": self.block,
            "block_hash": self.block_hash,
            "pools": self.pools.values().map(|p| {
                let mut v = p.to_json();
                v["ticks"] = ticks_json(self.ticks.get(&p.address));
                v
            }).collect::<Vec<_>>(),
            "positions": self.positions.values().map(Position::to_json).collect::<Vec<_>>(),
        })
    }
}

/// A raw log as the folder reads it (from the `logs` table or a hot block).
#[derive(Debug)]
pub struct RawLog<'a> {
    /// Block.
    pub block_number: u64,
    /// Transaction hash.
    pub transaction_hash: &'a [u8],
    /// Emitter.
    pub address: Address,
    /// Topics.
    pub topics: &'a [B256],
    /// Data.
    pub data: &'a [u8],
}

impl<'a> From<&'a tidewater_chain::Log> for RawLog<'a> {
    fn from(l: &'a tidewater_chain::Log) -> Self {
        Self {
            block_number: l.block_number,
            transaction_hash: l.transaction_hash.as_slice(),
            address: l.address,
            topics: &l.topics,
            data: &l.data,
        }
    }
}

/// The values a block changed, as they were before it: applying the journal undoes the block.
/// Its keys are also what the block touched, which the live stream reports.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// Pools before (None: did not exist).
    pub pools: HashMap<Address, Option<PoolState>>,
    /// Ticks before.
    pub ticks: HashMap<(Address, i32), Option<TickLiquidity>>,
    /// Positions before.
    pub positions: HashMap<U256, Option<Position>>,
}

impl Journal {
    fn pool(&mut self, st: &UniswapState, a: Address) {
        self.pools.entry(a).or_insert_with(|| st.pools.get(&a).copied());
    }

    fn tick(&mut self, st: &UniswapState, a: Address, t: i32) {
        self.ticks
            .entry((a, t))
            .or_insert_with(|| st.ticks.get(&a).and_then(|m| m.get(&t)).copied());
    }

    fn position(&mut self, st: &UniswapState, id: U256) {
        self.positions.entry(id).or_insert_with(|| st.positions.get(&id).copied());
    }

    /// Restores the values recorded (the state before the journaled block).
    pub fn undo(&self, st: &mut UniswapState) {
        for (a, p) in &self.pools {
            match p {
                Some(p) => st.pools.insert(*a, *p),
                None => st.pools.remove(a),
            };
        }
        for ((a, t), v) in &self.ticks {
            let m = st.ticks.entry(*a).or_default();
            match v {
                Some(v) => m.insert(*t, *v),
                None => m.remove(t),
            };
            if m.is_empty() {
                st.ticks.remove(a);
            }
        }
        for (id, p) in &self.positions {
            match p {
                Some(p) => st.positions.insert(*id, *p),
                None => st.positions.remove(id),
            };
        }
    }

    /// Merges a later block's journal (the earliest "before" value wins).
    pub fn absorb(&mut self, later: &Self) {
        for (k, v) in &later.pools {
            self.pools.entry(*k).or_insert(*v);
        }
        for (k, v) in &later.ticks {
            self.ticks.entry(*k).or_insert(*v);
        }
        for (k, v) in &later.positions {
            self.positions.entry(*k).or_insert(*v);
        }
    }
}

/// Folds events one by one.
#[derive(Debug, Clone)]
pub struct Folder {
    factory: Address,
    position_manager: Option<Address>,
    state: UniswapState,
    /// The last pool Mint owned by the position manager: (tx hash, pool, lower, upper).
    last_npm_mint: Option<(B256, Address, i32, i32)>,
}

impl Folder {
    /// A folder for one Uniswap V3 deployment.
    pub fn new(u: &UniswapV3) -> Self {
        Self::with_state(u, UniswapState::default())
    }

    /// A folder that continues from `state` (a snapshot).
    pub fn with_state(u: &UniswapV3, state: UniswapState) -> Self {
        Self {
            factory: u.factory,
            position_manager: u.position_manager,
            state,
            last_npm_mint: None,
        }
    }

    /// The state so far.
    pub fn state(&self) -> &UniswapState {
        &self.state
    }

    /// The state, mutably (the live service undoes journals on it).
    pub fn state_mut(&mut self) -> &mut UniswapState {
        &mut self.state
    }

    /// Takes the state out.
    pub fn into_state(self) -> UniswapState {
        self.state
    }

    /// Marks the end of a block: the state is now as of (`number`, `hash`).
    pub fn end_block(&mut self, number: u64, hash: B256) {
        self.state.block = number;
        self.state.block_hash = hash;
        self.last_npm_mint = None;
    }

    /// Applies one raw log (logs must come in chain order), recording prior values in
    /// `journal`: decodes it as what its emitter is to this deployment (the factory, a pool the
    /// state knows, the position manager) and applies the event ([`Folder::apply_event`]).
    pub fn apply(&mut self, l: &RawLog<'_>, journal: Option<&mut Journal>) -> FoldResult {
        self.state.block = self.state.block.max(l.block_number);
        let source = if l.address == self.factory {
            Source::Factory
        } else if Some(l.address) == self.position_manager {
            Source::PositionManager
        } else if self.state.pools.contains_key(&l.address) {
            Source::Pool
        } else {
            return Ok(());
        };
        let Some(event) = PoolEvent::decode(source, l.topics, l.data) else { return Ok(()) };
        let e = TypedEvent {
            block_number: l.block_number,
            log_index: 0,
            transaction_hash: B256::try_from(l.transaction_hash).unwrap_or_default(),
            address: l.address,
            event,
        };
        self.apply_event(&e, journal)
    }

    /// Applies one typed event (events must come in chain order), recording prior values in
    /// `journal`. An event is taken only from its emitter: `PoolCreated` from the factory, pool
    /// events from a pool the state knows, position events from the position manager. An
    /// event that is impossible given the state (liquidity below zero or past its type) is an
    /// error, never a wrapped or clamped number: the caller marks its state degraded.
    pub fn apply_event(&mut self, e: &TypedEvent, mut journal: Option<&mut Journal>) -> FoldResult {
        self.state.block = self.state.block.max(e.block_number);
        let (address, block) = (e.address, e.block_number);
        match e.event {
            PoolEvent::PoolCreated { token0, token1, fee, tick_spacing, pool } => {
                if address != self.factory {
                    return Ok(());
                }
                if let Some(j) = journal.as_deref_mut() {
                    j.pool(&self.state, pool);
                }
                self.state.pools.insert(
                    pool,
                    PoolState {
                        address: pool,
                        token0,
                        token1,
                        fee,
                        tick_spacing,
                        sqrt_price_x96: U256::ZERO,
                        tick: 0,
                        liquidity: 0,
                    },
                );
                Ok(())
            }
            PoolEvent::PositionTransfer { .. }
            | PoolEvent::PositionIncrease { .. }
            | PoolEvent::PositionDecrease { .. } => {
                if Some(address) != self.position_manager {
                    return Ok(());
                }
                self.apply_position(e, journal)
            }
            PoolEvent::Initialize { .. }
            | PoolEvent::Swap { .. }
            | PoolEvent::Mint { .. }
            | PoolEvent::Burn { .. } => {
                if !self.state.pools.contains_key(&address) {
                    return Ok(());
                }
                if let Some(j) = journal.as_deref_mut() {
                    j.pool(&self.state, address);
                }
                let npm = self.position_manager;
                let Some(pool) = self.state.pools.get_mut(&address) else { return Ok(()) };
                match e.event {
                    PoolEvent::Swap { sqrt_price_x96, liquidity, tick } => {
                        (pool.sqrt_price_x96, pool.liquidity, pool.tick) =
                            (sqrt_price_x96, liquidity, tick);
                    }
                    PoolEvent::Initialize { sqrt_price_x96, tick } => {
                        (pool.sqrt_price_x96, pool.tick) = (sqrt_price_x96, tick);
                    }
                    PoolEvent::Mint { owner, tick_lower: lo, tick_upper: hi, amount } => {
                        let delta = signed(amount, block, "Mint amount")?;
                        self.update_ticks(address, lo, hi, delta, block, journal)?;
                        if Some(owner) == npm {
                            self.last_npm_mint = Some((e.transaction_hash, address, lo, hi));
                        }
                    }
                    PoolEvent::Burn { tick_lower: lo, tick_upper: hi, amount } => {
                        let delta = -signed(amount, block, "Burn amount")?;
                        self.update_ticks(address, lo, hi, delta, block, journal)?;
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn apply_position(&mut self, e: &TypedEvent, journal: Option<&mut Journal>) -> FoldResult {
        let id = match e.event {
            PoolEvent::PositionTransfer { token_id, .. }
            | PoolEvent::PositionIncrease { token_id, .. }
            | PoolEvent::PositionDecrease { token_id, .. } => token_id,
            _ => return Ok(()),
        };
        if let Some(j) = journal {
            j.position(&self.state, id);
        }
        let positions = &mut self.state.positions;
        match e.event {
            PoolEvent::PositionTransfer { to, token_id } => {
                if to == Address::ZERO {
                    positions.remove(&token_id);
                } else {
                    positions
                        .entry(token_id)
                        .or_insert(Position {
                            token_id,
                            owner: to,
                            pool: None,
                            tick_lower: 0,
                            tick_upper: 0,
                            liquidity: 0,
                        })
                        .owner = to;
                }
            }
            PoolEvent::PositionIncrease { token_id, liquidity } => {
                if let Some(p) = positions.get_mut(&token_id) {
                    if p.pool.is_none() {
                        if let Some((tx, pool, lo, hi)) = &self.last_npm_mint {
                            if *tx == e.transaction_hash {
                                (p.pool, p.tick_lower, p.tick_upper) = (Some(*pool), *lo, *hi);
                            }
                        }
                    }
                    p.liquidity = p.liquidity.checked_add(liquidity).ok_or_else(|| FoldError {
                        block: e.block_number,
                        what: format!("position {token_id} liquidity overflows uint128"),
                    })?;
                }
            }
            PoolEvent::PositionDecrease { token_id, liquidity } => {
                if let Some(p) = positions.get_mut(&token_id) {
                    p.liquidity = p.liquidity.checked_sub(liquidity).ok_or_else(|| FoldError {
                        block: e.block_number,
                        what: format!(
                            "position {token_id} decreases by {liquidity} but holds {} (was it minted before the dataset's first block?)",
                            p.liquidity
                        ),
                    })?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn update_ticks(
        &mut self,
        pool: Address,
        lo: i32,
        hi: i32,
        delta: i128,
        block: u64,
        mut journal: Option<&mut Journal>,
    ) -> FoldResult {
        if delta == 0 {
            // A position manager `collect` burns 0: nothing moves.
            return Ok(());
        }
        let err = |what: String| FoldError { block, what };
        for (t, sign) in [(lo, 1i128), (hi, -1i128)] {
            if let Some(j) = journal.as_deref_mut() {
                j.tick(&self.state, pool, t);
            }
            let m = self.state.ticks.entry(pool).or_default();
            let entry = m.entry(t).or_default();
            entry.liquidity_gross = add_signed(entry.liquidity_gross, delta).ok_or_else(|| {
                err(format!(
                    "tick {t} of pool {pool}: liquidityGross {} {delta:+} leaves uint128 (was the pool's history folded from its creation?)",
                    entry.liquidity_gross
                ))
            })?;
            entry.liquidity_net = entry
                .liquidity_net
                .checked_add(sign * delta)
                .ok_or_else(|| err(format!("tick {t} of pool {pool}: liquidityNet overflows")))?;
            if entry.liquidity_gross == 0 {
                m.remove(&t);
                if m.is_empty() {
                    self.state.ticks.remove(&pool);
                }
            }
        }
        let Some(p) = self.state.pools.get_mut(&pool) else {
            return Err(err(format!("pool {pool} is not known")));
        };
        if lo <= p.tick && p.tick < hi {
            p.liquidity = add_signed(p.liquidity, delta).ok_or_else(|| {
                err(format!("pool {pool}: liquidity {} {delta:+} leaves uint128", p.liquidity))
            })?;
        }
        Ok(())
    }
}

/// An event the fold cannot apply to the state it has (see [`Folder::apply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {block}: {what}")]
pub struct FoldError {
    /// The log's block.
    pub block: u64,
    /// What was impossible.
    pub what: String,
}

impl From<FoldError> for tidewater_storage::Error {
    fn from(e: FoldError) -> Self {
        Self::Derived { block: e.block, what: e.what }
    }
}

/// What applying one log gives.
pub type FoldResult = Result<(), FoldError>;

fn signed(v: u128, block: u64, what: &str) -> Result<i128, FoldError> {
    i128::try_from(v).map_err(|_| FoldError { block, what: format!("{what} {v} is over int128") })
}

/// `v + delta` when it stays a uint128.
fn add_signed(v: u128, delta: i128) -> Option<u128> {
    if delta >= 0 {
        v.checked_add(delta.unsigned_abs())
    } else {
        v.checked_sub(delta.unsigned_abs())
    }
}

/// Blocks between derived-state snapshots: 256 blocks is under an hour of mainnet and a fold
/// of at most ~20k logs on a busy Uniswap chain, which keeps a past-block lookup well under
/// 100 ms.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 256;

/// Columns the fold reads from the `logs` table.
const FOLD_COLUMNS: [&str; 8] = [
    schema::BLOCK_NUMBER,
    schema::TRANSACTION_HASH,
    schema::ADDRESS,
    schema::TOPICS[0],
    schema::TOPICS[1],
    schema::TOPICS[2],
    schema::TOPICS[3],
    schema::DATA,
];

/// Callback of [`fold_cold`] at a marked block: the folder is as of the block, the journal holds
/// what changed since the previous mark (when journaling).
pub type AtMark<'a> =
    dyn FnMut(u64, &Folder, Option<&mut Journal>) -> tidewater_storage::Result<()> + 'a;

/// Folds the cold `logs` of blocks in `(after, through]` into `folder`, calling `at` for every
/// `n` in `marks` (ascending) once the state is as of block `n` (snapshots, per-block updates).
/// With `journal`, prior values are recorded in it. Returns the number of logs applied.
pub fn fold_cold(
    ds: &Dataset,
    folder: &mut Folder,
    after: Option<u64>,
    through: u64,
    marks: &mut dyn Iterator<Item = u64>,
    mut journal: Option<&mut Journal>,
    at: &mut AtMark<'_>,
) -> tidewater_storage::Result<u64> {
    let mut marks = marks.peekable();
    let mut applied = 0;
    let lo = after.map_or(0, |a| a + 1);
    let mut topics_buf: Vec<B256> = Vec::with_capacity(4);
    for chunk in ds.manifest().chunks() {
        if chunk.end < lo || chunk.start > through {
            continue;
        }
        let Some(f) = chunk.tables.get(schema::LOGS) else { continue };
        let path = ds.root().join(&f.path);
        for b in tidewater_storage::read_parquet_columns(&path, &FOLD_COLUMNS)? {
            let bn: &UInt64Array = column(&b, schema::BLOCK_NUMBER, &path)?;
            let tx: &BinaryArray = column(&b, schema::TRANSACTION_HASH, &path)?;
            let addr: &BinaryArray = column(&b, schema::ADDRESS, &path)?;
            let data: &BinaryArray = column(&b, schema::DATA, &path)?;
            let topics: Vec<&BinaryArray> = schema::TOPICS
                .iter()
                .map(|t| column::<BinaryArray>(&b, t, &path))
                .collect::<tidewater_storage::Result<_>>()?;
            for i in 0..b.num_rows() {
                let n = bn.value(i);
                if n < lo {
                    continue;
                }
                if n > through {
                    break;
                }
                while let Some(m) = marks.next_if(|m| *m < n) {
                    folder.state.block = m;
                    folder.last_npm_mint = None;
                    at(m, folder, journal.as_deref_mut())?;
                }
                topics_buf.clear();
                for t in topics.iter().filter(|t| !t.is_null(i)) {
                    topics_buf.push(fixed(t.value(i), &path, "topic")?);
                }
                folder.apply(
                    &RawLog {
                        block_number: n,
                        transaction_hash: tx.value(i),
                        address: Address::new(fixed(addr.value(i), &path, "address")?),
                        topics: &topics_buf,
                        data: data.value(i),
                    },
                    journal.as_deref_mut(),
                )?;
                applied += 1;
            }
        }
    }
    for m in marks.by_ref().take_while(|m| *m <= through) {
        folder.state.block = m;
        folder.last_npm_mint = None;
        at(m, folder, journal.as_deref_mut())?;
    }
    folder.state.block = through;
    folder.last_npm_mint = None;
    Ok(applied)
}

/// Refuses a dataset that cannot give the Uniswap V3 state: it must hold every block from the
/// factory's deployment (`factory_start_block`) to its last committed block. Folded from a
/// later start, pools, ticks and positions created before it are missing and every later
/// event on them is wrong.
pub fn check_coverage(ds: &Dataset, u: &UniswapV3) -> tidewater_storage::Result<()> {
    let m = ds.manifest();
    let (Some(first), Some(last)) = (m.chunks().first(), m.last()) else { return Ok(()) };
    let not_covered =
        |what: String| tidewater_storage::Error::NotCovered { path: ds.root().to_path_buf(), what };
    let from = u.factory_start_block;
    if first.start > from {
        return Err(not_covered(format!(
            "it starts at block {}, after the factory's deployment block {from} (factory_start_block); backfill from {from}",
            first.start
        )));
    }
    if let Some((a, b)) = m.gaps(from, last.end).first() {
        return Err(not_covered(format!("blocks [{a}, {b}] are missing; backfill them first")));
    }
    Ok(())
}

/// The hash of cold block `n`, read from the `blocks` table.
pub fn cold_block_hash(ds: &Dataset, n: u64) -> tidewater_storage::Result<Option<B256>> {
    let Some(chunk) = ds.manifest().chunks().iter().find(|c| c.start <= n && n <= c.end) else {
        return Ok(None);
    };
    if chunk.end == n {
        return Ok(Some(chunk.last_block_hash));
    }
    let Some(f) = chunk.tables.get(schema::BLOCKS) else { return Ok(None) };
    let path = ds.root().join(&f.path);
    for b in
        tidewater_storage::read_parquet_columns(&path, &[schema::BLOCK_NUMBER, schema::BLOCK_HASH])?
    {
        let bn: &UInt64Array = column(&b, schema::BLOCK_NUMBER, &path)?;
        let h: &BinaryArray = column(&b, schema::BLOCK_HASH, &path)?;
        if let Some(i) = (0..b.num_rows()).find(|i| bn.value(*i) == n) {
            return Ok(Some(fixed(h.value(i), &path, "block_hash")?));
        }
    }
    Ok(None)
}

/// The newest committed snapshot at or below `block` whose hash is the cold block's hash.
pub fn usable_snapshot(
    ds: &Dataset,
    block: u64,
) -> tidewater_storage::Result<Option<tidewater_storage::Snapshot>> {
    for s in tidewater_storage::list_snapshots(ds.root())?.into_iter().rev() {
        if s.block_number > block {
            continue;
        }
        let want: Option<B256> = s.block_hash.parse().ok();
        if want.is_some() && cold_block_hash(ds, s.block_number)? == want {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// The state as of cold block `block`: the newest usable snapshot at or below it plus a fold
/// of the logs after it. With `write_every`, snapshots missing on the way are written (at the
/// multiples of the interval).
pub fn cold_state_at(
    ds: &Dataset,
    u: &UniswapV3,
    block: u64,
    write_every: Option<u64>,
) -> tidewater_storage::Result<UniswapState> {
    let snap = usable_snapshot(ds, block)?;
    let (mut folder, after) = match &snap {
        Some(s) => (Folder::with_state(u, read_snapshot(ds, s)?), Some(s.block_number)),
        None => (Folder::new(u), None),
    };
    let first = after.map_or(0, |a| a + 1);
    // A snapshot is taken at the end of the chunk holding each multiple of the interval: a
    // chunk's last block always has its hash in the manifest, while a backfilled chunk's other
    // blocks may have no `blocks` row (see `Checks::Spans`).
    let chunks = ds.manifest().chunks();
    let mut marks: Vec<u64> = match write_every.filter(|e| *e > 0) {
        Some(e) => (first.div_ceil(e).max(1) * e..=block)
            .step_by(e as usize)
            .map(|m| match chunks.get(chunks.partition_point(|c| c.end < m)) {
                Some(c) if c.start <= m && c.end <= block => c.end,
                _ => m,
            })
            .collect(),
        None => Vec::new(),
    };
    marks.dedup();
    let mut marks = marks.into_iter();
    fold_cold(ds, &mut folder, after, block, &mut marks, None, &mut |m, f, _| {
        if let Some(h) = cold_block_hash(ds, m)? {
            let mut st = f.state().clone();
            st.block_hash = h;
            write_snapshot_in(ds.root(), Some(ds), &st)?;
        }
        Ok(())
    })?;
    let mut st = folder.into_state();
    st.block = block;
    st.block_hash = cold_block_hash(ds, block)?.unwrap_or_default();
    Ok(st)
}

/// Folds the committed `logs` of `ds` up to `block` (inclusive; everything when `None`).
pub fn fold_dataset(
    ds: &Dataset,
    u: &UniswapV3,
    block: Option<u64>,
) -> tidewater_storage::Result<UniswapState> {
    let Some(last) = ds.manifest().last().map(|c| c.end) else {
        return Ok(UniswapState::default());
    };
    cold_state_at(ds, u, block.unwrap_or(last).min(last), None)
}

fn snapshot_batches(st: &UniswapState) -> [(&'static str, RecordBatch); 3] {
    use arrow::array::{ArrayRef, BinaryBuilder, Int32Array, StringArray, UInt32Array};
    let n = st.block;
    let bin = |it: &mut dyn Iterator<Item = Option<Address>>| {
        let mut b = BinaryBuilder::new();
        for a in it {
            match a {
                Some(a) => b.append_value(a.as_slice()),
                None => b.append_null(),
            }
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let p: Vec<&PoolState> = st.pools.values().collect();
    let pools = RecordBatch::try_from_iter([
        (schema::BLOCK_NUMBER, Arc::new(UInt64Array::from(vec![n; p.len()])) as ArrayRef),
        ("address", bin(&mut p.iter().map(|p| Some(p.address)))),
        ("token0", bin(&mut p.iter().map(|p| Some(p.token0)))),
        ("token1", bin(&mut p.iter().map(|p| Some(p.token1)))),
        ("fee", Arc::new(UInt32Array::from_iter_values(p.iter().map(|p| p.fee)))),
        ("tick_spacing", Arc::new(Int32Array::from_iter_values(p.iter().map(|p| p.tick_spacing)))),
        (
            "sqrt_price_x96",
            Arc::new(StringArray::from_iter_values(p.iter().map(|p| p.sqrt_price_x96.to_string()))),
        ),
        ("tick", Arc::new(Int32Array::from_iter_values(p.iter().map(|p| p.tick)))),
        (
            "liquidity",
            Arc::new(StringArray::from_iter_values(p.iter().map(|p| p.liquidity.to_string()))),
        ),
    ])
    .expect("invariant: columns have equal lengths");
    let t: Vec<(Address, i32, TickLiquidity)> =
        st.ticks.iter().flat_map(|(a, m)| m.iter().map(move |(t, l)| (*a, *t, *l))).collect();
    let ticks = RecordBatch::try_from_iter([
        (schema::BLOCK_NUMBER, Arc::new(UInt64Array::from(vec![n; t.len()])) as ArrayRef),
        ("pool", bin(&mut t.iter().map(|x| Some(x.0)))),
        ("tick", Arc::new(Int32Array::from_iter_values(t.iter().map(|x| x.1)))),
        (
            "liquidity_gross",
            Arc::new(StringArray::from_iter_values(
                t.iter().map(|x| x.2.liquidity_gross.to_string()),
            )),
        ),
        (
            "liquidity_net",
            Arc::new(StringArray::from_iter_values(
                t.iter().map(|x| x.2.liquidity_net.to_string()),
            )),
        ),
    ])
    .expect("invariant: columns have equal lengths");
    let q: Vec<&Position> = st.positions.values().collect();
    let positions = RecordBatch::try_from_iter([
        (schema::BLOCK_NUMBER, Arc::new(UInt64Array::from(vec![n; q.len()])) as ArrayRef),
        (
            "token_id",
            Arc::new(StringArray::from_iter_values(q.iter().map(|p| p.token_id.to_string()))),
        ),
        ("owner", bin(&mut q.iter().map(|p| Some(p.owner)))),
        ("pool", bin(&mut q.iter().map(|p| p.pool))),
        ("tick_lower", Arc::new(Int32Array::from_iter_values(q.iter().map(|p| p.tick_lower)))),
        ("tick_upper", Arc::new(Int32Array::from_iter_values(q.iter().map(|p| p.tick_upper)))),
        (
            "liquidity",
            Arc::new(StringArray::from_iter_values(q.iter().map(|p| p.liquidity.to_string()))),
        ),
    ])
    .expect("invariant: columns have equal lengths");
    [
        (schema::POOL_SNAPSHOTS, pools),
        (schema::TICK_SNAPSHOTS, ticks),
        (schema::POSITION_SNAPSHOTS, positions),
    ]
}

/// Writes `st` as the snapshot at `st.block` into the data directory `root` (blocking I/O).
///
/// Written only while its block is committed with its hash, checked under the snapshot lock
/// (a rollback removes snapshots under the same lock): a snapshot of a state computed before a
/// rollback is not written back after it. `false`: not written for that reason.
pub fn write_snapshot(
    root: &std::path::Path,
    st: &UniswapState,
) -> tidewater_storage::Result<bool> {
    write_snapshot_in(root, None, st)
}

/// [`write_snapshot`], checking against `ds` when given (a fold's own view of the dataset: one
/// manifest read per fold, not per snapshot) rather than the dataset as it is now.
fn write_snapshot_in(
    root: &std::path::Path,
    ds: Option<&Dataset>,
    st: &UniswapState,
) -> tidewater_storage::Result<bool> {
    tidewater_storage::with_snapshot_lock(root, || {
        let opened;
        let ds = match ds {
            Some(ds) => ds,
            None => {
                opened = Dataset::open(root)?;
                &opened
            }
        };
        if cold_block_hash(ds, st.block)? != Some(st.block_hash) {
            return Ok(false);
        }
        let batches = snapshot_batches(st);
        tidewater_storage::write_snapshot(root, st.block, &st.block_hash.to_string(), &batches)?;
        Ok(true)
    })
}

fn corrupt(ds: &Dataset, what: String) -> tidewater_storage::Error {
    tidewater_storage::Error::Corrupt {
        path: ds.root().join(tidewater_storage::SNAPSHOT_DIR),
        what,
    }
}

/// Reads a snapshot back into a state.
pub fn read_snapshot(
    ds: &Dataset,
    s: &tidewater_storage::Snapshot,
) -> tidewater_storage::Result<UniswapState> {
    use arrow::array::{Int32Array, StringArray, UInt32Array};
    let addr =
        |a: &BinaryArray, i: usize, path: &std::path::Path| -> tidewater_storage::Result<Address> {
            Ok(Address::new(fixed(a.value(i), path, "address")?))
        };
    let u128_of = |v: U256, what: &str| -> tidewater_storage::Result<u128> {
        u128::try_from(v).map_err(|_| corrupt(ds, format!("{what} {v} is over uint128")))
    };
    let num = |a: &StringArray, i: usize, what: &str| -> tidewater_storage::Result<U256> {
        a.value(i)
            .parse()
            .map_err(|_| corrupt(ds, format!("{what} {:?} is not a number", a.value(i))))
    };
    let mut st = UniswapState {
        block: s.block_number,
        block_hash: s.block_hash.parse().map_err(|_| corrupt(ds, "bad block hash".into()))?,
        ..Default::default()
    };
    let path = s.file(ds.root(), schema::POOL_SNAPSHOTS);
    for b in s.read(ds.root(), schema::POOL_SNAPSHOTS)? {
        let (a, t0, t1): (&BinaryArray, &BinaryArray, &BinaryArray) = (
            column(&b, "address", &path)?,
            column(&b, "token0", &path)?,
            column(&b, "token1", &path)?,
        );
        let (fee, ts, tick): (&UInt32Array, &Int32Array, &Int32Array) = (
            column(&b, "fee", &path)?,
            column(&b, "tick_spacing", &path)?,
            column(&b, "tick", &path)?,
        );
        let (px, liq): (&StringArray, &StringArray) =
            (column(&b, "sqrt_price_x96", &path)?, column(&b, "liquidity", &path)?);
        for i in 0..b.num_rows() {
            st.pools.insert(
                addr(a, i, &path)?,
                PoolState {
                    address: addr(a, i, &path)?,
                    token0: addr(t0, i, &path)?,
                    token1: addr(t1, i, &path)?,
                    fee: fee.value(i),
                    tick_spacing: ts.value(i),
                    sqrt_price_x96: num(px, i, "sqrt_price_x96")?,
                    tick: tick.value(i),
                    liquidity: u128_of(num(liq, i, "liquidity")?, "liquidity")?,
                },
            );
        }
    }
    let path = s.file(ds.root(), schema::TICK_SNAPSHOTS);
    for b in s.read(ds.root(), schema::TICK_SNAPSHOTS)? {
        let (p, t): (&BinaryArray, &Int32Array) =
            (column(&b, "pool", &path)?, column(&b, "tick", &path)?);
        let (g, n): (&StringArray, &StringArray) =
            (column(&b, "liquidity_gross", &path)?, column(&b, "liquidity_net", &path)?);
        for i in 0..b.num_rows() {
            let net: i128 = n
                .value(i)
                .parse()
                .map_err(|_| corrupt(ds, format!("liquidity_net {:?}", n.value(i))))?;
            st.ticks.entry(addr(p, i, &path)?).or_default().insert(
                t.value(i),
                TickLiquidity {
                    liquidity_gross: u128_of(num(g, i, "liquidity_gross")?, "liquidity_gross")?,
                    liquidity_net: net,
                },
            );
        }
    }
    let path = s.file(ds.root(), schema::POSITION_SNAPSHOTS);
    for b in s.read(ds.root(), schema::POSITION_SNAPSHOTS)? {
        let (id, liq): (&StringArray, &StringArray) =
            (column(&b, "token_id", &path)?, column(&b, "liquidity", &path)?);
        let (o, p): (&BinaryArray, &BinaryArray) =
            (column(&b, "owner", &path)?, column(&b, "pool", &path)?);
        let (lo, hi): (&Int32Array, &Int32Array) =
            (column(&b, "tick_lower", &path)?, column(&b, "tick_upper", &path)?);
        for i in 0..b.num_rows() {
            let token_id = num(id, i, "token_id")?;
            st.positions.insert(
                token_id,
                Position {
                    token_id,
                    owner: addr(o, i, &path)?,
                    pool: if p.is_null(i) { None } else { Some(addr(p, i, &path)?) },
                    tick_lower: lo.value(i),
                    tick_upper: hi.value(i),
                    liquidity: u128_of(num(liq, i, "liquidity")?, "liquidity")?,
                },
            );
        }
    }
    Ok(st)
}

/// Checks the invariants every consistent pool state has: the liquidityNet of all ticks sums to
/// zero and the in-range liquidity equals the prefix sum of liquidityNet up to the current tick.
pub fn check_invariants(p: &PoolState, ticks: Option<&Ticks>) -> Result<(), String> {
    let ticks = ticks.cloned().unwrap_or_default();
    let sum: i128 = ticks.values().map(|t| t.liquidity_net).sum();
    if sum != 0 {
        return Err(format!("pool {}: liquidityNet sums to {sum}", p.address));
    }
    if p.sqrt_price_x96 != U256::ZERO {
        let prefix: i128 = ticks.range(..=p.tick).map(|(_, t)| t.liquidity_net).sum();
        if prefix != p.liquidity as i128 {
            return Err(format!(
                "pool {}: liquidity {} but prefix sum {prefix}",
                p.address, p.liquidity
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        Burn, DecreaseLiquidity, IncreaseLiquidity, Initialize, Mint, PoolCreated, Swap, Transfer,
    };
    use alloy_primitives::aliases::{I24, U160, U24};
    use alloy_sol_types::SolEvent;
    use proptest::prelude::*;

    const FACTORY: Address = Address::repeat_byte(0xfa);
    const NPM: Address = Address::repeat_byte(0xee);
    const POOL: Address = Address::repeat_byte(0x01);

    fn u() -> UniswapV3 {
        UniswapV3 { factory: FACTORY, position_manager: Some(NPM), factory_start_block: 0 }
    }

    struct Owned {
        address: Address,
        tx: B256,
        topics: Vec<B256>,
        data: Vec<u8>,
    }

    fn log<E: SolEvent>(address: Address, tx: u8, e: &E) -> Owned {
        let d = e.encode_log_data();
        Owned {
            address,
            tx: B256::repeat_byte(tx),
            topics: d.topics().to_vec(),
            data: d.data.to_vec(),
        }
    }

    fn apply_all(f: &mut Folder, logs: &[Owned], block: u64, j: Option<&mut Journal>) {
        let mut j = j;
        for l in logs {
            let raw = RawLog {
                block_number: block,
                transaction_hash: l.tx.as_slice(),
                address: l.address,
                topics: &l.topics,
                data: &l.data,
            };
            f.apply(&raw, j.as_deref_mut()).unwrap();
        }
        f.end_block(block, B256::with_last_byte(block as u8));
    }

    #[test]
    fn issue_8_impossible_events_are_errors_not_wrapped_numbers() {
        // A dataset that starts after the pool's mints: a burn or a decrease with nothing to
        // take from must not wrap around.
        let mut f = genesis();
        let pool = *f.state().pools.keys().next().unwrap();
        let burn = log(
            pool,
            9,
            &Burn {
                owner: Address::repeat_byte(7),
                tickLower: i24(-60),
                tickUpper: i24(60),
                amount: 1_000,
                amount0: U256::ZERO,
                amount1: U256::ZERO,
            },
        );
        let raw = RawLog {
            block_number: 5,
            transaction_hash: burn.tx.as_slice(),
            address: burn.address,
            topics: &burn.topics,
            data: &burn.data,
        };
        let e = f.apply(&raw, None).unwrap_err();
        assert_eq!(e.block, 5);
        assert!(e.what.contains("liquidityGross"), "{e}");
        let huge = log(
            pool,
            9,
            &Mint {
                sender: Address::ZERO,
                owner: Address::repeat_byte(7),
                tickLower: i24(-60),
                tickUpper: i24(60),
                amount: u128::MAX,
                amount0: U256::ZERO,
                amount1: U256::ZERO,
            },
        );
        let raw = RawLog { topics: &huge.topics, data: &huge.data, ..raw };
        assert!(f.apply(&raw, None).unwrap_err().what.contains("int128"));
    }

    fn i24(v: i32) -> I24 {
        I24::try_from(v).unwrap()
    }

    /// A block of random pool and position-manager events (what a block can hold).
    fn block_ops() -> impl Strategy<Value = Vec<(u8, i32, i32, u64)>> {
        prop::collection::vec((0u8..5, -20i32..20, 1i32..20, 1u64..1_000_000), 1..12)
    }

    fn events(ops: &[(u8, i32, i32, u64)], next_id: &mut u64) -> Vec<Owned> {
        let mut out = Vec::new();
        for (i, (kind, lo, width, amount)) in ops.iter().enumerate() {
            let tx = i as u8 + 1;
            let (lo, hi) = (lo * 10, (lo + width) * 10);
            match kind {
                0 => out.push(log(
                    POOL,
                    tx,
                    &Swap {
                        sender: Address::ZERO,
                        recipient: Address::ZERO,
                        amount0: Default::default(),
                        amount1: Default::default(),
                        sqrtPriceX96: U160::from(*amount),
                        liquidity: *amount as u128,
                        tick: i24(lo + 5),
                    },
                )),
                1 | 2 => {
                    // A position manager mint: pool Mint, Transfer from 0, IncreaseLiquidity.
                    let id = U256::from(*next_id);
                    *next_id += 1;
                    out.push(log(
                        POOL,
                        tx,
                        &Mint {
                            sender: NPM,
                            owner: NPM,
                            tickLower: i24(lo),
                            tickUpper: i24(hi),
                            amount: *amount as u128,
                            amount0: U256::ZERO,
                            amount1: U256::ZERO,
                        },
                    ));
                    out.push(log(
                        NPM,
                        tx,
                        &Transfer { from: Address::ZERO, to: Address::repeat_byte(7), tokenId: id },
                    ));
                    out.push(log(
                        NPM,
                        tx,
                        &IncreaseLiquidity {
                            tokenId: id,
                            liquidity: *amount as u128,
                            amount0: U256::ZERO,
                            amount1: U256::ZERO,
                        },
                    ));
                }
                3 => out.push(log(
                    NPM,
                    tx,
                    &Transfer {
                        from: Address::repeat_byte(7),
                        to: Address::repeat_byte(8),
                        tokenId: U256::from(1),
                    },
                )),
                _ => out.push(log(
                    POOL,
                    tx,
                    &Burn {
                        owner: NPM,
                        tickLower: i24(lo),
                        tickUpper: i24(hi),
                        amount: 0,
                        amount0: U256::ZERO,
                        amount1: U256::ZERO,
                    },
                )),
            }
        }
        out
    }

    fn genesis() -> Folder {
        let mut f = Folder::new(&u());
        let created = [
            log(
                FACTORY,
                1,
                &PoolCreated {
                    token0: Address::repeat_byte(2),
                    token1: Address::repeat_byte(3),
                    fee: U24::from(3000),
                    tickSpacing: i24(10),
                    pool: POOL,
                },
            ),
            log(POOL, 1, &Initialize { sqrtPriceX96: U160::from(1u64 << 40), tick: i24(0) }),
        ];
        apply_all(&mut f, &created, 1, None);
        f
    }

    proptest! {
        /// Applying a block and then undoing its journal leaves the state unchanged, and the
        /// journal's keys are exactly what changed.
        #[test]
        fn apply_then_undo_is_identity(first in block_ops(), second in block_ops()) {
            let mut next_id = 1;
            let mut f = genesis();
            apply_all(&mut f, &events(&first, &mut next_id), 2, None);
            let before = f.state().clone();
            let mut j = Journal::default();
            apply_all(&mut f, &events(&second, &mut next_id), 3, Some(&mut j));
            let after = f.state().clone();
            for (a, p) in &before.pools {
                if after.pools.get(a) != Some(p) {
                    prop_assert!(j.pools.contains_key(a));
                }
            }
            let mut st = after;
            j.undo(&mut st);
            st.block = before.block;
            st.block_hash = before.block_hash;
            prop_assert_eq!(st, before);
        }

        /// Every consistent state: liquidityNet sums to 0 and the pool's liquidity is the prefix
        /// sum up to its tick, when every mint is folded (no swaps in between move the tick).
        #[test]
        fn mints_keep_the_invariants(ops in prop::collection::vec((1u8..3, -20i32..20, 1i32..20, 1u64..1_000_000), 1..20)) {
            let mut next_id = 1;
            let mut f = genesis();
            apply_all(&mut f, &events(&ops, &mut next_id), 2, None);
            let st = f.state();
            prop_assert!(check_invariants(&st.pools[&POOL], st.ticks.get(&POOL)).is_ok());
            prop_assert_eq!(st.positions.len(), ops.len());
        }
    }

    /// One arbitrary event: (kind, tick, width, amount, token id, raw data for garbage).
    type AnyOp = (u8, i32, i32, u128, u64, Vec<u8>);

    fn any_event(op: &AnyOp) -> Owned {
        let (kind, lo, width, amount, id, data) = op;
        let (lo, hi) = (lo * 10, (lo + width) * 10);
        let id = U256::from(*id);
        let tx = 9;
        match kind % 8 {
            0 => log(
                POOL,
                tx,
                &Swap {
                    sender: Address::ZERO,
                    recipient: Address::ZERO,
                    amount0: Default::default(),
                    amount1: Default::default(),
                    sqrtPriceX96: U160::from(*amount as u64),
                    liquidity: *amount,
                    tick: i24(lo),
                },
            ),
            1 => log(
                POOL,
                tx,
                &Mint {
                    sender: NPM,
                    owner: if id.bit(0) { NPM } else { Address::repeat_byte(7) },
                    tickLower: i24(lo),
                    tickUpper: i24(hi),
                    amount: *amount,
                    amount0: U256::ZERO,
                    amount1: U256::ZERO,
                },
            ),
            2 => log(
                POOL,
                tx,
                &Burn {
                    owner: NPM,
                    tickLower: i24(lo),
                    tickUpper: i24(hi),
                    amount: *amount,
                    amount0: U256::ZERO,
                    amount1: U256::ZERO,
                },
            ),
            3 => log(
                NPM,
                tx,
                &IncreaseLiquidity {
                    tokenId: id,
                    liquidity: *amount,
                    amount0: U256::ZERO,
                    amount1: U256::ZERO,
                },
            ),
            4 => log(
                NPM,
                tx,
                &DecreaseLiquidity {
                    tokenId: id,
                    liquidity: *amount,
                    amount0: U256::ZERO,
                    amount1: U256::ZERO,
                },
            ),
            5 => log(
                NPM,
                tx,
                &Transfer {
                    from: if id.bit(1) { Address::ZERO } else { Address::repeat_byte(7) },
                    to: if id.bit(2) { Address::ZERO } else { Address::repeat_byte(8) },
                    tokenId: id,
                },
            ),
            // A known signature with words that do not decode (short, or out of range).
            6 => {
                let sigs = [
                    Mint::SIGNATURE_HASH,
                    Burn::SIGNATURE_HASH,
                    Swap::SIGNATURE_HASH,
                    IncreaseLiquidity::SIGNATURE_HASH,
                ];
                let mut topics = vec![sigs[(id.as_limbs()[0] % 4) as usize]];
                topics.extend(
                    (0..(width.unsigned_abs() % 4))
                        .map(|i| B256::repeat_byte(data.get(i as usize).copied().unwrap_or(0xff))),
                );
                Owned { address: POOL, tx: B256::repeat_byte(tx), topics, data: data.clone() }
            }
            _ => log(
                NPM,
                tx,
                &DecreaseLiquidity {
                    tokenId: U256::from(1),
                    liquidity: u128::MAX,
                    amount0: U256::ZERO,
                    amount1: U256::ZERO,
                },
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The fold over arbitrary event sequences (impossible ones included: burns of nothing,
        /// decreases past zero, undecodable words) never panics; an event it cannot take is an
        /// error whose journal undo restores the state before the block (what the live state
        /// does before marking itself degraded); after every block it took, no tick is kept
        /// with zero liquidityGross and the pool's liquidityNet sums to zero.
        #[test]
        fn the_fold_takes_any_events_or_says_no(ops in prop::collection::vec(
            (0u8..8, -30i32..30, 1i32..30, prop_oneof![0u128..1_000_000, any::<u128>()], 0u64..6,
             prop::collection::vec(any::<u8>(), 0..200)),
            1..40,
        )) {
            let mut f = genesis();
            for (n, op) in ops.iter().enumerate() {
                let block = 2 + n as u64;
                let before = f.state().clone();
                let ev = any_event(op);
                let raw = RawLog {
                    block_number: block,
                    transaction_hash: ev.tx.as_slice(),
                    address: ev.address,
                    topics: &ev.topics,
                    data: &ev.data,
                };
                let mut j = Journal::default();
                match f.apply(&raw, Some(&mut j)) {
                    Ok(()) => {
                        let st = f.state();
                        if let Some(ticks) = st.ticks.get(&POOL) {
                            prop_assert!(ticks.values().all(|t| t.liquidity_gross > 0));
                            let (mut up, mut down) = (U256::ZERO, U256::ZERO);
                            for t in ticks.values() {
                                let v = U256::from(t.liquidity_net.unsigned_abs());
                                if t.liquidity_net > 0 { up += v } else { down += v }
                            }
                            prop_assert_eq!(up, down);
                        }
                    }
                    Err(e) => {
                        prop_assert_eq!(e.block, block);
                        j.undo(f.state_mut());
                        let mut st = f.state().clone();
                        st.block = before.block;
                        prop_assert_eq!(st, before);
                    }
                }
                f.end_block(block, B256::with_last_byte(block as u8));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The live state folds the typed events a hot block carries (decoded once by the
        /// tail's decoder into the cold tables' batches); the cold fold decodes raw logs. Over
        /// arbitrary blocks of events (garbage, spoofed emitters and impossible ones included),
        /// both give the same state after every block, and the same error where one fails.
        #[test]
        fn typed_events_from_the_bus_fold_as_the_raw_logs_do(blocks in prop::collection::vec(
            prop::collection::vec(
                (0u8..8, -30i32..30, 1i32..30, prop_oneof![0u128..1_000_000, any::<u128>()],
                 0u64..6, prop::collection::vec(any::<u8>(), 0..200)),
                0..6,
            ),
            1..12,
        )) {
            let catalog = tidewater_chain::EventCatalog::new(&tidewater_chain::Sources {
                uniswap_v3: Some(u()),
                contracts: vec![],
            })
            .unwrap();
            let (mut raw, mut typed) = (genesis(), genesis());
            for (n, ops) in blocks.iter().enumerate() {
                let block = 2 + n as u64;
                let logs: Vec<tidewater_chain::Log> = ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        let e = any_event(op);
                        // A spoofer: pool events from an address the factory never created.
                        let address = if op.4 == 5 { Address::repeat_byte(0x55) } else { e.address };
                        tidewater_chain::Log {
                            address,
                            topics: e.topics,
                            data: e.data.into(),
                            block_number: block,
                            block_hash: B256::with_last_byte(block as u8),
                            transaction_hash: e.tx,
                            transaction_index: i as u64,
                            log_index: i as u64,
                            removed: false,
                            block_timestamp: None,
                        }
                    })
                    .collect();
                let by_raw = logs.iter().try_for_each(|l| raw.apply(&RawLog::from(l), None));
                let batches = tidewater_chain::encode::decode_batches(&catalog, &logs, |a, _| a == POOL)
                    .unwrap()
                    .batches;
                let events = crate::events::from_batches(&batches).unwrap();
                let by_typed = events.iter().try_for_each(|e| typed.apply_event(e, None));
                prop_assert_eq!(&by_raw, &by_typed);
                // (Mid-block, `block` may differ: a raw log that does not decode still moves
                // it; the block's end sets it for both.)
                raw.end_block(block, B256::with_last_byte(block as u8));
                typed.end_block(block, B256::with_last_byte(block as u8));
                prop_assert_eq!(raw.state(), typed.state());
                if by_raw.is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn collect_burns_zero_and_changes_nothing() {
        let mut f = genesis();
        let mut next_id = 1;
        apply_all(&mut f, &events(&[(1, -5, 10, 500)], &mut next_id), 2, None);
        let before = f.state().clone();
        let mut j = Journal::default();
        apply_all(&mut f, &events(&[(4, -5, 10, 0)], &mut next_id), 3, Some(&mut j));
        assert_eq!(f.state().ticks, before.ticks);
        assert!(j.ticks.is_empty(), "a zero burn touches no tick");
    }

    #[test]
    fn intervals_carry_the_prefix_sum() {
        let mut t = Ticks::new();
        t.insert(-10, TickLiquidity { liquidity_gross: 5, liquidity_net: 5 });
        t.insert(0, TickLiquidity { liquidity_gross: 3, liquidity_net: 3 });
        t.insert(10, TickLiquidity { liquidity_gross: 8, liquidity_net: -8 });
        assert_eq!(intervals(Some(&t)), vec![(-10, 0, 5), (0, 10, 8)]);
    }

    #[test]
    fn a_snapshot_of_a_block_not_committed_with_its_hash_is_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = tidewater_storage::Identity::new(1, "0x00".into(), serde_json::json!({}), vec![]);
        drop(
            tidewater_storage::DatasetWriter::open(dir.path(), &id, &Default::default(), None)
                .expect("dataset"),
        );
        // Block 5 is not committed (a rollback took it, or it never was): no snapshot of it.
        let st = UniswapState { block: 5, block_hash: B256::repeat_byte(7), ..Default::default() };
        assert!(!write_snapshot(dir.path(), &st).expect("checked"));
        assert!(tidewater_storage::list_snapshots(dir.path()).expect("list").is_empty());
    }
}
