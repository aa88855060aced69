//! `/v1/pools`, `/v1/pools/{address}` and `/v1/pools/{address}/ticks`: pool state and the
//! liquidity distribution, at the head or at a past block.

use super::*;

pub(super) async fn pools(
    State(svc): State<Service>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    let (st, confirmed) = state_at(&svc, q.block).await?;
    let pools: Vec<Value> = st
        .pools
        .values()
        .map(|p| {
            let mut v = p.to_json();
            v["initialized_ticks"] = st.ticks.get(&p.address).map_or(0, |t| t.len()).into();
            v
        })
        .collect();
    Ok(json_response(&json!({"block": block_json(&st, confirmed), "pools": pools})))
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

#[derive(serde::Serialize)]
pub(super) struct BlockOut {
    number: u64,
    hash: alloy_primitives::B256,
    confirmed: bool,
}

impl BlockOut {
    pub(super) fn of(st: &UniswapState, confirmed: bool) -> Self {
        Self { number: st.block, hash: st.block_hash, confirmed }
    }
}

/// A pool or a position with the block it is as of.
#[derive(serde::Serialize)]
pub(super) struct AtBlock<'a, T> {
    #[serde(flatten)]
    pub(super) item: &'a T,
    pub(super) block: BlockOut,
}

#[derive(serde::Serialize)]
struct IntervalOut {
    tick_lower: i32,
    tick_upper: i32,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    liquidity: i128,
}

#[derive(serde::Serialize)]
struct TicksOut {
    pool: Address,
    block: BlockOut,
    tick: i32,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    liquidity: u128,
    #[serde(serialize_with = "tidewater_state::pool_state::dec")]
    sqrt_price_x96: U256,
    tick_spacing: i32,
    ticks: Vec<TickEntry>,
    intervals: Vec<IntervalOut>,
}

pub(super) fn to_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("invariant: plain structs serialize")
}

fn pool_body(st: &UniswapState, a: &Address, confirmed: bool) -> Option<Vec<u8>> {
    Some(to_bytes(&AtBlock { item: st.pools.get(a)?, block: BlockOut::of(st, confirmed) }))
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

pub(super) async fn pool(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    pool_view(&svc, &address, q.block, pool_body).await
}

pub(super) async fn pool_ticks(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    pool_view(&svc, &address, q.block, ticks_body).await
}
