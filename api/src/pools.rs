//! `/v1/pools`, `/v1/pools/{address}` and `/v1/pools/{address}/ticks`: pool state and the
//! liquidity distribution, at the head or at a past block.

use super::*;
use tidewater_state::pool_state::PoolState;
use utoipa::ToSchema;

/// The block an answer is as of.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct BlockOut {
    /// Block number.
    number: u64,
    /// Block hash.
    #[schema(value_type = String, pattern = "^0x[0-9a-f]{64}$")]
    hash: alloy_primitives::B256,
    /// Whether the block is final (in the cold tier).
    confirmed: bool,
}

impl BlockOut {
    pub(super) fn of(st: &UniswapState, confirmed: bool) -> Self {
        Self { number: st.block, hash: st.block_hash, confirmed }
    }
}

/// One pool in the list, with its number of initialized ticks.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct PoolListItem {
    #[serde(flatten)]
    pool: PoolState,
    /// Initialized ticks.
    initialized_ticks: usize,
}

/// Every pool, as of a block.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct PoolList {
    block: BlockOut,
    pools: Vec<PoolListItem>,
}

/// One pool, as of a block.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct PoolAt {
    #[serde(flatten)]
    pool: PoolState,
    block: BlockOut,
}

/// The active liquidity between two consecutive initialized ticks.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct IntervalOut {
    tick_lower: i32,
    tick_upper: i32,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    liquidity: i128,
}

/// A pool's liquidity distribution: initialized ticks and the active liquidity per interval.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct TicksOut {
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pool: Address,
    block: BlockOut,
    tick: i32,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    liquidity: u128,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    #[schema(value_type = String, pattern = "^-?[0-9]+$")]
    sqrt_price_x96: U256,
    tick_spacing: i32,
    ticks: Vec<TickEntry>,
    intervals: Vec<IntervalOut>,
}

/// Every pool's state.
#[utoipa::path(get, path = "/v1/pools", params(("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent")),
    responses((status = 200, body = PoolList), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn pools(
    State(svc): State<Service>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    let (st, confirmed) = state_at(&svc, q.block).await?;
    let pools = st
        .pools
        .values()
        .map(|p| PoolListItem {
            pool: *p,
            initialized_ticks: st.ticks.get(&p.address).map_or(0, |t| t.len()),
        })
        .collect();
    Ok(json_response(&PoolList { block: BlockOut::of(&st, confirmed), pools }))
}

/// Answers `body(state, confirmed)` for one pool: at the head from the newest view (no copy:
/// the hot path), else from the state at the block.
async fn pool_view(
    svc: &Service,
    address: &str,
    block: Option<u64>,
    body: fn(&UniswapState, &Address, bool) -> Option<Vec<u8>>,
) -> ApiResult {
    let a = parse_address(address)?;
    let bytes = if block.is_none() {
        let live = svc.live()?;
        let st = live.head();
        body(st, &a, live.is_confirmed(st.block))
            .ok_or_else(|| missing(format!("unknown pool {address}")))?
    } else {
        let (st, confirmed) = state_at(svc, block).await?;
        body(&st, &a, confirmed)
            .ok_or_else(|| missing(format!("unknown pool {address} at block {}", st.block)))?
    };
    Ok(bytes_response(bytes))
}

pub(super) fn to_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("invariant: plain structs serialize")
}

fn pool_body(st: &UniswapState, a: &Address, confirmed: bool) -> Option<Vec<u8>> {
    Some(to_bytes(&PoolAt { pool: *st.pools.get(a)?, block: BlockOut::of(st, confirmed) }))
}

fn ticks_body(st: &UniswapState, a: &Address, confirmed: bool) -> Option<Vec<u8>> {
    let p = st.pools.get(a)?;
    let t = st.ticks.get(a);
    let intervals = tidewater_state::pool_state::intervals(t)
        .into_iter()
        .map(|(lo, hi, l)| IntervalOut { tick_lower: lo, tick_upper: hi, liquidity: l })
        .collect();
    Some(to_bytes(&TicksOut {
        pool: *a,
        block: BlockOut::of(st, confirmed),
        tick: p.tick,
        liquidity: p.liquidity,
        sqrt_price_x96: p.sqrt_price_x96,
        tick_spacing: p.tick_spacing,
        ticks: tick_entries(t),
        intervals,
    }))
}

/// One pool's state.
#[utoipa::path(get, path = "/v1/pools/{address}", params(("address" = String, Path, description = "Pool address: 0x and 40 hex digits"), ("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent")),
    responses((status = 200, body = PoolAt), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn pool(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    pool_view(&svc, &address, q.block, pool_body).await
}

/// Liquidity distribution: initialized ticks and the active liquidity of each interval.
#[utoipa::path(get, path = "/v1/pools/{address}/ticks", params(("address" = String, Path, description = "Pool address: 0x and 40 hex digits"), ("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent")),
    responses((status = 200, body = TicksOut), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn pool_ticks(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    pool_view(&svc, &address, q.block, ticks_body).await
}
