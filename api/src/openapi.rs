//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`: derived from the
//! handlers' annotations and the answer types they serialize (utoipa), so it cannot drift from
//! what is served; the API tests validate every JSON answer against it.

use crate::{ops, pools, positions, sql, stream, tokens, ErrorBody, TokenInfo};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidewater",
        description = "Uniswap V3 pool, tick and position state at the head and at past blocks; a live stream with reorg reverts; read-only SQL. Big integers are decimal strings; every error is `{\"error\": \"...\"}`."
    ),
    paths(
        ops::page,
        tokens::token,
        pools::pools,
        pools::pool,
        pools::pool_ticks,
        positions::positions,
        positions::position,
        positions::owner_positions,
        stream::stream,
        sql::sql,
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(ErrorBody, TokenInfo))
)]
struct ApiDoc;

/// The document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
