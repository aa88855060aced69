//! # tidewater-api
//!
//! The HTTP API (axum): pool, tick and position state at the head and at past blocks, the SSE
//! stream, read-only SQL, health, readiness, Prometheus metrics, the OpenAPI document and the
//! liquidity page. It owns routing, request parsing and answers; the state logic is in
//! `tidewater-state` and the SQL engines in `tidewater-queries`.
//!
//! ```text
//!   GET /v1/pools, /ticks, /positions    GET /v1/stream (SSE)        POST /v1/sql (DataFusion:
//!   (head: newest View, no lock; hot     pending / confirmed /       cold files + hot blocks,
//!    past block: undo journals;          reverted, Last-Event-ID     `confirmed` column)
//!    confirmed: snapshot + fold)
//! ```
//!
//! Every error is JSON `{"error": "..."}` with a 4xx status for bad input (malformed address,
//! unknown pool, a block outside the indexed range, bad or non-read SQL) and 5xx otherwise.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod openapi;
mod ops;
mod pools;
mod positions;
mod sql;
mod stream;
mod tokens;

use pools::to_bytes;

use alloy_primitives::{Address, U256};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
pub use tidewater_chain::metrics::Registry;
use tidewater_chain::metrics::{Histogram, DELAY_BUCKETS};
use tidewater_queries::df_sql::{hot_batches, run_sql, SqlError, SqlLimits};
use tidewater_state::live::{LiveReader, StateAt, StreamEvent, Subscription, View};
use tidewater_state::pool_state::{
    cold_state_at, tick_entries, ticks_json, TickEntry, UniswapState,
};
use tokio::sync::broadcast;

/// The default listen address: loopback only, so nothing is exposed unless asked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Whether the indexer behind the service has caught up with the chain head.
pub type CaughtUpFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// This instance's role with `run --ha` (`"leader"` or `"standby"`), shown by `/ready`.
pub type RoleFn = Arc<dyn Fn() -> &'static str + Send + Sync>;

/// Why this instance cannot do its work right now (the object store is unreachable), shown
/// by `/ready` as its reason; `None` when nothing blocks it.
pub type BlockedFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct Service {
    live: LiveReader,
    metrics: Arc<Registry>,
    caught_up: CaughtUpFn,
    limits: SqlLimits,
    sql_slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<ServerStats>,
    tokens: Option<TokenFn>,
    token_cache: Arc<std::sync::Mutex<HashMap<Address, Option<TokenInfo>>>>,
    role: Option<RoleFn>,
    blocked: Option<BlockedFn>,
    /// Cancelled when the server stops: streams end with it.
    shutdown: tokio_util::sync::CancellationToken,
}

/// An ERC-20's symbol and decimals, as its own `symbol()` and `decimals()` say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The token's address.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{40}$")]
    pub address: Address,
    /// `symbol()`.
    pub symbol: String,
    /// `decimals()`.
    pub decimals: u8,
}

/// Looks a token's metadata up on the chain (`None`: not an ERC-20 that answers both calls).
pub type TokenFn =
    Arc<dyn Fn(Address) -> futures::future::BoxFuture<'static, Option<TokenInfo>> + Send + Sync>;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("limits", &self.limits).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ServerStats {
    requests: AtomicU64,
    stream_clients: AtomicU64,
    stream_delay: Histogram,
    sql_queries: AtomicU64,
}

impl Service {
    /// A service over `live`. `metrics` holds the collectors of the stages it runs beside (the
    /// tail's, the RPC client's; empty for `serve`), to which it adds its own; `caught_up`
    /// comes from the tail when there is one.
    pub fn new(
        live: LiveReader,
        mut metrics: Registry,
        caught_up: CaughtUpFn,
        limits: SqlLimits,
    ) -> Self {
        let stats = Arc::new(ServerStats {
            requests: AtomicU64::new(0),
            stream_clients: AtomicU64::new(0),
            stream_delay: Histogram::new(DELAY_BUCKETS),
            sql_queries: AtomicU64::new(0),
        });
        metrics.register_collector(Box::new(ops::ApiMetrics {
            live: live.clone(),
            caught_up: caught_up.clone(),
            stats: stats.clone(),
        }));
        Self {
            live,
            metrics: Arc::new(metrics),
            caught_up,
            limits,
            sql_slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1))),
            stats,
            tokens: None,
            token_cache: Arc::default(),
            role: None,
            blocked: None,
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Serves `/v1/tokens/{address}` through `f` (a node is needed: `run` and `tail` have one).
    pub fn with_tokens(mut self, f: TokenFn) -> Self {
        self.tokens = Some(f);
        self
    }

    /// Makes `/ready` answer 503 with `f`'s reason while it gives one.
    pub fn with_blocked(mut self, f: BlockedFn) -> Self {
        self.blocked = Some(f);
        self
    }

    /// Shows this instance's role (`run --ha`) in `/ready`.
    pub fn with_role(mut self, f: RoleFn) -> Self {
        self.role = Some(f);
        self
    }

    /// The routes.
    pub fn router(self) -> Router {
        let stats = self.stats.clone();
        Router::new()
            .route("/", get(ops::page))
            .route("/v1/tokens/{address}", get(tokens::token))
            .route("/v1/pools", get(pools::pools))
            .route("/v1/pools/{address}", get(pools::pool))
            .route("/v1/pools/{address}/ticks", get(pools::pool_ticks))
            .route("/v1/positions", get(positions::positions))
            .route("/v1/positions/{token_id}", get(positions::position))
            .route("/v1/owners/{address}/positions", get(positions::owner_positions))
            .route("/v1/stream", get(stream::stream))
            .route("/v1/sql", post(sql::sql))
            .route("/health", get(ops::health))
            .route("/ready", get(ops::ready))
            .route("/metrics", get(ops::metrics))
            .route("/openapi.json", get(ops::openapi))
            .fallback(not_found)
            .layer(axum::middleware::map_response(json_errors))
            .layer(axum::middleware::map_request(move |req: axum::extract::Request| {
                let stats = stats.clone();
                async move {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    req
                }
            }))
            .with_state(self)
    }

    /// The newest view of the live state (no lock: the writer never holds readers up). A
    /// writer that died (it panicked: a bug) is a 503 for every request, and `/ready` says not
    /// ready, rather than a state that silently stopped moving.
    fn live(&self) -> Result<Arc<View>, ApiError> {
        if self.live.writer_failed() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the live state failed (its updater panicked); restart the process".into(),
            ));
        }
        Ok(self.live.view())
    }
}

/// The OpenAPI document that `/openapi.json` serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::document()
}

/// Serves until `cancel` fires.
pub async fn serve(
    service: Service,
    listener: tokio::net::TcpListener,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let service = Service { shutdown: cancel.clone(), ..service };
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// An API error: status and message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn missing(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

type ApiResult = Result<Response, ApiError>;

fn address_error(s: &str) -> String {
    format!("malformed address {s:?}: expected 0x and 40 hex digits")
}

fn parse_address(s: &str) -> Result<Address, ApiError> {
    tidewater_primitives::parse_address(s).map_err(|_| bad(address_error(s)))
}

/// A query string parsed into `T`; a malformed one is a 400 with the parser's message.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(Self(t)),
            Err(e) => {
                let text = e.body_text();
                let msg =
                    text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
                Err(bad(msg.to_string()))
            }
        }
    }
}

/// Query parameters, typed; each value is checked as it is parsed.
mod params {
    use alloy_primitives::Address;
    use serde::{de::Error as _, Deserialize, Deserializer};

    /// `?block=N`
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct AtBlock {
        #[serde(default, deserialize_with = "block")]
        pub(super) block: Option<u64>,
    }

    /// `?block=N&pool=0x..`
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Positions {
        #[serde(default, deserialize_with = "block")]
        pub(super) block: Option<u64>,
        #[serde(default, deserialize_with = "address")]
        pub(super) pool: Option<Address>,
    }

    /// `?pools=0x..,0x..`
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Stream {
        #[serde(default, deserialize_with = "addresses")]
        pub(super) pools: Option<Vec<Address>>,
    }

    fn block<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(|_| {
            D::Error::custom(format!("malformed block {s:?}: expected a block number (decimal)"))
        })
    }

    fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
        let s = String::deserialize(d)?;
        tidewater_primitives::parse_address(&s)
            .map(Some)
            .map_err(|_| D::Error::custom(super::address_error(&s)))
    }

    fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Address>>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.split(',')
            .map(|a| {
                tidewater_primitives::parse_address(a)
                    .map_err(|_| D::Error::custom(super::address_error(a)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn parse_token_id(s: &str) -> Result<U256, ApiError> {
    U256::from_str_radix(s, 10)
        .map_err(|_| bad(format!("malformed token id {s:?}: expected a decimal integer")))
}

/// The state at `block` (the head without one), and whether that block is confirmed.
async fn state_at(
    svc: &Service,
    block: Option<u64>,
) -> Result<(Arc<UniswapState>, bool), ApiError> {
    let at = svc.live()?.state_at(block).map_err(|e| match e {
        tidewater_state::live::BlockError::Empty => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        e => bad(e.to_string()),
    })?;
    match at {
        StateAt::Ready(st, confirmed) => Ok((Arc::from(st), confirmed)),
        StateAt::Cold(root, u, n) => {
            let st = tokio::task::spawn_blocking(move || {
                // A merge may replace files between listing and reading: retry once.
                let once = || {
                    let ds = tidewater_storage::Dataset::open(&root)?;
                    cold_state_at(&ds, &u, n, None)
                };
                once().or_else(|_| once())
            })
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the cold tier: {e}"))
            })?;
            Ok((Arc::new(st), true))
        }
    }
}

fn block_json(st: &UniswapState, confirmed: bool) -> Value {
    json!({"number": st.block, "hash": st.block_hash, "confirmed": confirmed})
}

fn json_response<T: serde::Serialize>(v: &T) -> Response {
    bytes_response(to_bytes(v))
}

fn bytes_response(json: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Longest error body rewritten as JSON; extractor rejections are one short line.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Every error answer is the API's JSON `{"error": ...}`, including those that axum's
/// extractors produce on their own as plain text (a body over the size limit, a path that is
/// not UTF-8, a missing content type).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), MAX_ERROR_BODY).await.unwrap_or_default();
    let msg = String::from_utf8_lossy(&body).trim().to_string();
    let msg =
        if msg.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { msg };
    ApiError(status, msg).into_response()
}

async fn not_found() -> ApiError {
    missing("no such endpoint; see /openapi.json")
}
