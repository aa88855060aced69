//! Uniswap V3 state folded from the raw `logs` table in (block_number, log_index) order, exactly
//! (integers only): per pool price, tick, liquidity and initialized ticks; per position manager
//! token its owner, pool, range and liquidity.
//!
//! The rules: `Initialize` sets price and tick; `Swap` carries the post-swap sqrtPriceX96,
//! liquidity and tick (the event's tick is used, never one recomputed from the price);
//! `Mint`/`Burn` move tick liquidity always and pool liquidity only when
//! tickLower <= tick < tickUpper; the position manager's `IncreaseLiquidity` takes its pool and
//! range from the pool `Mint` it made in the same transaction; `Transfer` moves ownership and a
//! transfer to the zero address burns the token.

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{sol, SolEvent};
use arrow::array::{Array, BinaryArray, UInt64Array};
use serde::Serialize;
use std::collections::BTreeMap;
use tidewater_chain::UniswapV3;
use tidewater_storage::Dataset;

sol! {
    event PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, int24 tickSpacing, address pool);
    event Initialize(uint160 sqrtPriceX96, int24 tick);
    event Swap(address indexed sender, address indexed recipient, int256 amount0, int256 amount1, uint160 sqrtPriceX96, uint128 liquidity, int24 tick);
    event Mint(address sender, address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
    event Burn(address indexed owner, int24 indexed tickLower, int24 indexed tickUpper, uint128 amount, uint256 amount0, uint256 amount1);
    event IncreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1);
    event DecreaseLiquidity(uint256 indexed tokenId, uint128 liquidity, uint256 amount0, uint256 amount1);
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
}

/// Liquidity at one initialized tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TickLiquidity {
    /// Total liquidity referencing the tick.
    #[serde(serialize_with = "as_string")]
    pub liquidity_gross: u128,
    /// Liquidity added when the price crosses the tick upwards.
    #[serde(serialize_with = "as_string")]
    pub liquidity_net: i128,
}

/// One pool's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolState {
    /// Pool address.
    pub address: Address,
    /// token0.
    pub token0: Address,
    /// token1.
    pub token1: Address,
    /// Fee in hundredths of a bip.
    pub fee: u32,
    /// Tick spacing.
    pub tick_spacing: i32,
    /// sqrt(price) as Q64.96 (0 before Initialize).
    #[serde(serialize_with = "as_string")]
    pub sqrt_price_x96: U256,
    /// Current tick.
    pub tick: i32,
    /// In-range liquidity.
    #[serde(serialize_with = "as_string")]
    pub liquidity: u128,
    /// Initialized ticks.
    #[serde(serialize_with = "ticks_as_list")]
    pub ticks: BTreeMap<i32, TickLiquidity>,
}

/// One position manager token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Token id.
    #[serde(serialize_with = "as_string")]
    pub token_id: U256,
    /// Owner.
    pub owner: Address,
    /// Pool, once known.
    pub pool: Option<Address>,
    /// Lower tick.
    pub tick_lower: i32,
    /// Upper tick.
    pub tick_upper: i32,
    /// Liquidity.
    #[serde(serialize_with = "as_string")]
    pub liquidity: u128,
}

fn as_string<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn ticks_as_list<S: serde::Serializer>(
    t: &BTreeMap<i32, TickLiquidity>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(t.len()))?;
    for (tick, l) in t {
        seq.serialize_element(&serde_json::json!({
            "tick": tick,
            "liquidity_gross": l.liquidity_gross.to_string(),
            "liquidity_net": l.liquidity_net.to_string(),
        }))?;
    }
    seq.end()
}

/// The folded state as of `block`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UniswapState {
    /// Last block folded.
    pub block: u64,
    /// Pools by address.
    pub pools: BTreeMap<Address, PoolState>,
    /// Positions by token id.
    pub positions: BTreeMap<U256, Position>,
}

/// A raw log as read back from the `logs` table.
#[derive(Debug)]
pub struct RawLog<'a> {
    /// Block.
    pub block_number: u64,
    /// Transaction hash.
    pub transaction_hash: &'a [u8],
    /// Emitter.
    pub address: Address,
    /// Topics.
    pub topics: Vec<B256>,
    /// Data.
    pub data: &'a [u8],
}

/// Folds events one by one.
#[derive(Debug)]
pub struct Folder {
    factory: Address,
    position_manager: Option<Address>,
    state: UniswapState,
    /// The last pool Mint owned by the position manager: (tx hash, pool, lower, upper).
    last_npm_mint: Option<(Vec<u8>, Address, i32, i32)>,
}

impl Folder {
    /// A folder for one Uniswap V3 deployment.
    pub fn new(u: &UniswapV3) -> Self {
        Self {
            factory: u.factory,
            position_manager: u.position_manager,
            state: UniswapState::default(),
            last_npm_mint: None,
        }
    }

    /// The state so far.
    pub fn state(&self) -> &UniswapState {
        &self.state
    }

    /// Applies one log (logs must come in chain order).
    pub fn apply(&mut self, l: &RawLog<'_>) {
        self.state.block = self.state.block.max(l.block_number);
        let Some(t0) = l.topics.first() else { return };
        let topics = l.topics.iter().copied();
        if l.address == self.factory {
            if *t0 == PoolCreated::SIGNATURE_HASH {
                if let Ok(e) = PoolCreated::decode_raw_log(topics, l.data) {
                    self.state.pools.insert(
                        e.pool,
                        PoolState {
                            address: e.pool,
                            token0: e.token0,
                            token1: e.token1,
                            fee: e.fee.to::<u32>(),
                            tick_spacing: e.tickSpacing.as_i32(),
                            sqrt_price_x96: U256::ZERO,
                            tick: 0,
                            liquidity: 0,
                            ticks: BTreeMap::new(),
                        },
                    );
                }
            }
            return;
        }
        if Some(l.address) == self.position_manager {
            self.apply_position(l, t0);
            return;
        }
        let npm = self.position_manager;
        let Some(pool) = self.state.pools.get_mut(&l.address) else { return };
        if *t0 == Swap::SIGNATURE_HASH {
            if let Ok(e) = Swap::decode_raw_log(topics, l.data) {
                pool.sqrt_price_x96 = U256::from(e.sqrtPriceX96);
                pool.liquidity = e.liquidity;
                pool.tick = e.tick.as_i32();
            }
        } else if *t0 == Initialize::SIGNATURE_HASH {
            if let Ok(e) = Initialize::decode_raw_log(topics, l.data) {
                pool.sqrt_price_x96 = U256::from(e.sqrtPriceX96);
                pool.tick = e.tick.as_i32();
            }
        } else if *t0 == Mint::SIGNATURE_HASH {
            if let Ok(e) = Mint::decode_raw_log(topics, l.data) {
                let (lo, hi) = (e.tickLower.as_i32(), e.tickUpper.as_i32());
                update_ticks(pool, lo, hi, e.amount as i128);
                if Some(e.owner) == npm {
                    self.last_npm_mint = Some((l.transaction_hash.to_vec(), l.address, lo, hi));
                }
            }
        } else if *t0 == Burn::SIGNATURE_HASH {
            if let Ok(e) = Burn::decode_raw_log(topics, l.data) {
                update_ticks(pool, e.tickLower.as_i32(), e.tickUpper.as_i32(), -(e.amount as i128));
            }
        }
    }

    fn apply_position(&mut self, l: &RawLog<'_>, t0: &B256) {
        let topics = l.topics.iter().copied();
        let positions = &mut self.state.positions;
        if *t0 == Transfer::SIGNATURE_HASH {
            let Ok(e) = Transfer::decode_raw_log(topics, l.data) else { return };
            if e.to == Address::ZERO {
                positions.remove(&e.tokenId);
            } else {
                positions
                    .entry(e.tokenId)
                    .or_insert(Position {
                        token_id: e.tokenId,
                        owner: e.to,
                        pool: None,
                        tick_lower: 0,
                        tick_upper: 0,
                        liquidity: 0,
                    })
                    .owner = e.to;
            }
        } else if *t0 == IncreaseLiquidity::SIGNATURE_HASH {
            let Ok(e) = IncreaseLiquidity::decode_raw_log(topics, l.data) else { return };
            if let Some(p) = positions.get_mut(&e.tokenId) {
                if p.pool.is_none() {
                    if let Some((tx, pool, lo, hi)) = &self.last_npm_mint {
                        if tx.as_slice() == l.transaction_hash {
                            (p.pool, p.tick_lower, p.tick_upper) = (Some(*pool), *lo, *hi);
                        }
                    }
                }
                p.liquidity += e.liquidity;
            }
        } else if *t0 == DecreaseLiquidity::SIGNATURE_HASH {
            let Ok(e) = DecreaseLiquidity::decode_raw_log(topics, l.data) else { return };
            if let Some(p) = positions.get_mut(&e.tokenId) {
                p.liquidity -= e.liquidity;
            }
        }
    }
}

fn update_ticks(pool: &mut PoolState, lo: i32, hi: i32, delta: i128) {
    for (t, sign) in [(lo, 1i128), (hi, -1i128)] {
        let entry = pool.ticks.entry(t).or_default();
        entry.liquidity_gross = (entry.liquidity_gross as i128 + delta) as u128;
        entry.liquidity_net += sign * delta;
        if entry.liquidity_gross == 0 {
            pool.ticks.remove(&t);
        }
    }
    if lo <= pool.tick && pool.tick < hi {
        pool.liquidity = (pool.liquidity as i128 + delta) as u128;
    }
}

/// Folds the committed `logs` of `ds` up to `block` (inclusive; everything when `None`).
pub fn fold_dataset(
    ds: &Dataset,
    u: &UniswapV3,
    block: Option<u64>,
) -> tidewater_storage::Result<UniswapState> {
    let mut folder = Folder::new(u);
    for f in ds.files(tidewater_chain::schema::LOGS) {
        for b in tidewater_storage::read_parquet(&f)? {
            let col = |n: &str| b.column_by_name(n).expect("invariant: logs schema");
            let bn = col("block_number")
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("invariant: logs schema");
            let tx = col("transaction_hash")
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("invariant: logs schema");
            let addr = col("address")
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("invariant: logs schema");
            let data =
                col("data").as_any().downcast_ref::<BinaryArray>().expect("invariant: logs schema");
            let topics: Vec<&BinaryArray> = tidewater_chain::schema::TOPICS
                .iter()
                .map(|t| {
                    col(t).as_any().downcast_ref::<BinaryArray>().expect("invariant: logs schema")
                })
                .collect();
            for i in 0..b.num_rows() {
                if block.is_some_and(|n| bn.value(i) > n) {
                    return Ok(folder.state);
                }
                let raw = RawLog {
                    block_number: bn.value(i),
                    transaction_hash: tx.value(i),
                    address: Address::from_slice(addr.value(i)),
                    topics: topics
                        .iter()
                        .filter(|t| !t.is_null(i))
                        .map(|t| B256::from_slice(t.value(i)))
                        .collect(),
                    data: data.value(i),
                };
                folder.apply(&raw);
            }
        }
    }
    if let Some(n) = block {
        folder.state.block = n;
    }
    Ok(folder.state)
}

/// Checks the invariants every consistent pool state has: the liquidityNet of all ticks sums to
/// zero and the in-range liquidity equals the prefix sum of liquidityNet up to the current tick.
pub fn check_invariants(p: &PoolState) -> Result<(), String> {
    let sum: i128 = p.ticks.values().map(|t| t.liquidity_net).sum();
    if sum != 0 {
        return Err(format!("pool {}: liquidityNet sums to {sum}", p.address));
    }
    if p.sqrt_price_x96 != U256::ZERO {
        let prefix: i128 = p.ticks.range(..=p.tick).map(|(_, t)| t.liquidity_net).sum();
        if prefix != p.liquidity as i128 {
            return Err(format!(
                "pool {}: liquidity {} but prefix sum {prefix}",
                p.address, p.liquidity
            ));
        }
    }
    Ok(())
}
