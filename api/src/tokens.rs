//! `/v1/tokens/{address}`: an ERC-20's symbol and decimals, for the page.

use super::*;

/// An ERC-20's `symbol()` and `decimals()`, read from the node and cached.
#[utoipa::path(get, path = "/v1/tokens/{address}",
    params(("address" = String, Path, description = "Token address")),
    responses((status = 200, body = TokenInfo), (status = 400, description = "Malformed address", body = ErrorBody), (status = 404, description = "No node to ask (serve), or not an ERC-20 that answers", body = ErrorBody)))]
pub(super) async fn token(State(svc): State<Service>, Path(address): Path<String>) -> ApiResult {
    let a = parse_address(&address)?;
    let Some(lookup) = &svc.tokens else {
        return Err(missing("token metadata needs a node: serve has none (run or tail do)"));
    };
    let cached = svc.token_cache.lock().ok().and_then(|c| c.get(&a).cloned());
    let info = match cached {
        Some(info) => info,
        None => {
            let info = lookup(a).await;
            if let Ok(mut c) = svc.token_cache.lock() {
                c.insert(a, info.clone());
            }
            info
        }
    };
    let info =
        info.ok_or_else(|| missing(format!("{a} does not answer symbol() and decimals()")))?;
    Ok(json_response(&info))
}
