//! `/v1/positions`, `/v1/positions/{token_id}` and `/v1/owners/{address}/positions`.

use super::pools::{AtBlock, BlockOut};
use super::*;

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
    let list: Vec<Value> = st
        .positions
        .values()
        .filter(|p| pool.is_none() || p.pool == pool)
        .map(|p| p.to_json())
        .collect();
    Ok(json_response(&json!({"block": block_json(&st, confirmed), "positions": list})))
}

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
    Ok(json_response(&AtBlock { item: p, block: BlockOut::of(&st, confirmed) }))
}

pub(super) async fn owner_positions(
    State(svc): State<Service>,
    Path(address): Path<String>,
    ApiQuery(q): ApiQuery<params::AtBlock>,
) -> ApiResult {
    let owner = parse_address(&address)?;
    let (st, confirmed) = state_at(&svc, q.block).await?;
    let list: Vec<Value> =
        st.positions.values().filter(|p| p.owner == owner).map(|p| p.to_json()).collect();
    Ok(json_response(&json!({
        "owner": owner,
        "block": block_json(&st, confirmed),
        "positions": list,
    })))
}
