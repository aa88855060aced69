//! `/v1/positions`, `/v1/positions/{token_id}` and `/v1/owners/{address}/positions`.

use super::pools::BlockOut;
use super::*;
use tidewater_state::pool_state::Position;
use utoipa::ToSchema;

/// Positions, as of a block.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct PositionList {
    block: BlockOut,
    positions: Vec<Position>,
}

/// One position, as of a block.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct PositionAt {
    #[serde(flatten)]
    position: Position,
    block: BlockOut,
}

/// An owner's positions, as of a block.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct OwnerPositions {
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    owner: Address,
    block: BlockOut,
    positions: Vec<Position>,
}

/// Position manager positions (of one pool with `pool`).
#[utoipa::path(get, path = "/v1/positions",
    params(("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent"), ("pool" = Option<String>, Query, description = "Only this pool's positions")),
    responses((status = 200, body = PositionList), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool or position", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn positions(
    State(svc): State<Service>,
    ApiQuery(q): ApiQuery<params::Positions>,
) -> ApiResult {
    let pool = q.pool;
    let (st, confirmed) = state_at(&svc, q.block).await?;
    if let Some(p) = pool {
        if !st.pools.contains_key(&p) {
            return Err(missing(format!("unknown pool {p}")));
        }
    }
    let positions =
        st.positions.values().filter(|p| pool.is_none() || p.pool == pool).copied().collect();
    Ok(json_response(&PositionList { block: BlockOut::of(&st, confirmed), positions }))
}

/// One position.
#[utoipa::path(get, path = "/v1/positions/{token_id}",
    params(("token_id" = String, Path, description = "Token id (decimal)"), ("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent")),
    responses((status = 200, body = PositionAt), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool or position", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn position(
    State(svc): State<Service>,
    Path(token_id): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    let id = parse_token_id(&token_id)?;
    let (st, confirmed) = state_at(&svc, q.block).await?;
    let p = st
        .positions
        .get(&id)
        .ok_or_else(|| missing(format!("no position {id} at block {}", st.block)))?;
    Ok(json_response(&PositionAt { position: *p, block: BlockOut::of(&st, confirmed) }))
}

/// Positions of an owner.
#[utoipa::path(get, path = "/v1/owners/{address}/positions",
    params(("address" = String, Path, description = "Owner address"), ("block" = Option<u64>, Query, description = "Block number (decimal); the head when absent")),
    responses((status = 200, body = OwnerPositions), (status = 400, description = "Bad input: a malformed address or block, a block outside the indexed range", body = ErrorBody), (status = 404, description = "Unknown pool or position", body = ErrorBody), (status = 500, description = "Reading the cold tier failed", body = ErrorBody), (status = 503, description = "Nothing is indexed yet, or the live state failed", body = ErrorBody)))]
pub(super) async fn owner_positions(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    let owner = parse_address(&address)?;
    let (st, confirmed) = state_at(&svc, q.block).await?;
    let positions = st.positions.values().filter(|p| p.owner == owner).copied().collect();
    Ok(json_response(&OwnerPositions { owner, block: BlockOut::of(&st, confirmed), positions }))
}
