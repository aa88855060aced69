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
use tidewater_chain::metrics::{Histogram, DELAY_BUCKETS};
use tidewater_queries::df_sql::{hot_batches, run_sql, SqlError, SqlLimits};
use tidewater_state::live::{LiveReader, StateAt, StreamEvent, Subscription, View};
use tidewater_state::pool_state::{
    cold_state_at, tick_entries, ticks_json, TickEntry, UniswapState,
};
use tokio::sync::broadcast;

/// The default listen address: loopback only, so nothing is exposed unless asked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Renders extra Prometheus text (the tail's and the RPC client's counters).
pub type MetricsFn = Arc<dyn Fn(&mut String) + Send + Sync>;
/// Whether the indexer behind the service has caught up with the chain head.
pub type CaughtUpFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct Service {
    live: LiveReader,
    metrics: MetricsFn,
    caught_up: CaughtUpFn,
    limits: SqlLimits,
    sql_slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<ServerStats>,
    tokens: Option<TokenFn>,
    token_cache: Arc<std::sync::Mutex<HashMap<Address, Option<TokenInfo>>>>,
}

/// An ERC-20's symbol and decimals, as its own `symbol()` and `decimals()` say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The token's address.
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
    /// A service over `live`; `metrics` and `caught_up` come from the tail when there is one.
    pub fn new(
        live: LiveReader,
        metrics: MetricsFn,
        caught_up: CaughtUpFn,
        limits: SqlLimits,
    ) -> Self {
        Self {
            live,
            metrics,
            caught_up,
            limits,
            sql_slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1))),
            stats: Arc::new(ServerStats {
                requests: AtomicU64::new(0),
                stream_clients: AtomicU64::new(0),
                stream_delay: Histogram::new(DELAY_BUCKETS),
                sql_queries: AtomicU64::new(0),
            }),
            tokens: None,
            token_cache: Arc::default(),
        }
    }

    /// Serves `/v1/tokens/{address}` through `f` (a node is needed: `run` and `tail` have one).
    pub fn with_tokens(mut self, f: TokenFn) -> Self {
        self.tokens = Some(f);
        self
    }

    /// The routes.
    pub fn router(self) -> Router {
        let stats = self.stats.clone();
        Router::new()
            .route("/", get(page))
            .route("/v1/tokens/{address}", get(token))
            .route("/v1/pools", get(pools))
            .route("/v1/pools/{address}", get(pool))
            .route("/v1/pools/{address}/ticks", get(pool_ticks))
            .route("/v1/positions", get(positions))
            .route("/v1/positions/{token_id}", get(position))
            .route("/v1/owners/{address}/positions", get(owner_positions))
            .route("/v1/stream", get(stream))
            .route("/v1/sql", post(sql))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi))
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

/// Serves until `cancel` fires.
pub async fn serve(
    service: Service,
    listener: tokio::net::TcpListener,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// An API error: status and message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn missing(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

type ApiResult = Result<Response, ApiError>;

fn parse_address(s: &str) -> Result<Address, ApiError> {
    let ok = s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(bad(format!("malformed address {s:?}: expected 0x and 40 hex digits")));
    }
    s.parse().map_err(|_| bad(format!("malformed address {s:?}")))
}

fn parse_block(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("block") {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad(format!("malformed block {s:?}: expected a block number (decimal)"))),
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
        StateAt::Cold(root, u) => {
            let n = block.expect("invariant: the head is never cold-only");
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
    serde_json::to_value(BlockOut::of(st, confirmed)).expect("invariant: plain structs serialize")
}

fn json_response<T: serde::Serialize>(v: &T) -> Response {
    bytes_response(to_bytes(v))
}

fn bytes_response(json: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

async fn pools(State(svc): State<Service>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let (st, confirmed) = state_at(&svc, parse_block(&q)?).await?;
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
    q: &HashMap<String, String>,
    body: fn(&UniswapState, &Address, bool) -> Option<Vec<u8>>,
) -> ApiResult {
    let a = parse_address(address)?;
    let block = parse_block(q)?;
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
struct BlockOut {
    number: u64,
    hash: alloy_primitives::B256,
    confirmed: bool,
}

impl BlockOut {
    fn of(st: &UniswapState, confirmed: bool) -> Self {
        Self { number: st.block, hash: st.block_hash, confirmed }
    }
}

/// A pool or a position with the block it is as of.
#[derive(serde::Serialize)]
struct AtBlock<'a, T> {
    #[serde(flatten)]
    item: &'a T,
    block: BlockOut,
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

fn to_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
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

async fn pool(
    State(svc): State<Service>,
    Path(address): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    pool_view(&svc, &address, &q, pool_body).await
}

async fn pool_ticks(
    State(svc): State<Service>,
    Path(address): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    pool_view(&svc, &address, &q, ticks_body).await
}

async fn positions(
    State(svc): State<Service>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let pool = q.get("pool").map(|p| parse_address(p)).transpose()?;
    let (st, confirmed) = state_at(&svc, parse_block(&q)?).await?;
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

async fn position(
    State(svc): State<Service>,
    Path(token_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = parse_token_id(&token_id)?;
    let (st, confirmed) = state_at(&svc, parse_block(&q)?).await?;
    let p = st
        .positions
        .get(&id)
        .ok_or_else(|| missing(format!("no position {id} at block {}", st.block)))?;
    Ok(json_response(&AtBlock { item: p, block: BlockOut::of(&st, confirmed) }))
}

async fn owner_positions(
    State(svc): State<Service>,
    Path(address): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let owner = parse_address(&address)?;
    let (st, confirmed) = state_at(&svc, parse_block(&q)?).await?;
    let list: Vec<Value> =
        st.positions.values().filter(|p| p.owner == owner).map(|p| p.to_json()).collect();
    Ok(json_response(&json!({
        "owner": owner,
        "block": block_json(&st, confirmed),
        "positions": list,
    })))
}

struct StreamState {
    svc: Service,
    queue: VecDeque<Arc<StreamEvent>>,
    rx: broadcast::Receiver<Arc<StreamEvent>>,
    last_id: u64,
    filter: Option<HashSet<Address>>,
    first: Option<Event>,
    done: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.svc.stats.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn sse_event(ev: &StreamEvent, filter: Option<&HashSet<Address>>) -> Option<Event> {
    let data = ev.to_json(filter)?;
    Some(Event::default().id(ev.id.to_string()).event(ev.status.as_str()).data(data.to_string()))
}

fn resync_event(oldest: u64) -> Event {
    Event::default().event("resync").data(
        json!({"error": "events since Last-Event-ID are no longer kept; reload the state", "oldest_id": oldest})
            .to_string(),
    )
}

async fn stream(
    State(svc): State<Service>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = match q.get("pools").filter(|s| !s.is_empty()) {
        Some(s) => Some(s.split(',').map(parse_address).collect::<Result<HashSet<_>, _>>()?),
        None => None,
    };
    let last_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| bad("malformed Last-Event-ID: expected an event id"))?,
        ),
        None => None,
    };
    let (queue, rx, last, first) = {
        svc.live()?;
        let sub = svc.live.subscribe(last_id);
        let live = match &sub {
            Ok(s) => s.view.clone(),
            Err(_) => svc.live.view(),
        };
        if let Some(f) = &filter {
            if let Some(a) = f.iter().find(|a| !live.head().pools.contains_key(*a)) {
                return Err(missing(format!("unknown pool {a}")));
            }
        }
        match sub {
            Ok(Subscription { missed, rx, .. }) => {
                let last = last_id.unwrap_or(live.last_event_id());
                // A new client starts from the head state, then folds the events after it.
                let first = last_id.is_none().then(|| {
                    let st = live.head();
                    let keep = |a: &Address| filter.as_ref().is_none_or(|f| f.contains(a));
                    let snapshot = json!({
                        "block": block_json(st, live.is_confirmed(st.block)),
                        "pools": st.pools.values().filter(|p| keep(&p.address)).map(|p| {
                            let mut v = p.to_json();
                            v["ticks"] = ticks_json(st.ticks.get(&p.address));
                            v
                        }).collect::<Vec<_>>(),
                        "positions": st.positions.values().filter(|p| p.pool.is_none_or(|a| keep(&a))).map(|p| p.to_json()).collect::<Vec<_>>(),
                    });
                    Event::default().id(last.to_string()).event("snapshot").data(snapshot.to_string())
                });
                (missed.into_iter().collect(), rx, last, first)
            }
            Err(oldest) => match svc.live.subscribe(None) {
                Ok(s) => {
                    (VecDeque::new(), s.rx, s.view.last_event_id(), Some(resync_event(oldest)))
                }
                Err(_) => {
                    return Err(ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the stream is unavailable".into(),
                    ))
                }
            },
        }
    };
    svc.stats.stream_clients.fetch_add(1, Ordering::Relaxed);
    let st = StreamState { svc, queue, rx, last_id: last, filter, first, done: false };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(e) = st.first.take() {
            return Some((Ok(e), st));
        }
        loop {
            let ev = match st.queue.pop_front() {
                Some(ev) => ev,
                None => match st.rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the channel: catch up from the history.
                        match st.svc.live.since(st.last_id) {
                            Ok(evs) => {
                                st.queue.extend(evs);
                                continue;
                            }
                            Err(oldest) => {
                                st.done = true;
                                return Some((Ok(resync_event(oldest)), st));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            if ev.id <= st.last_id {
                continue;
            }
            st.last_id = ev.id;
            if let Some(e) = sse_event(&ev, st.filter.as_ref()) {
                st.svc.stats.stream_delay.observe(ev.received.elapsed().as_secs_f64());
                return Some((Ok(e), st));
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

async fn sql(State(svc): State<Service>, body: String) -> ApiResult {
    svc.stats.sql_queries.fetch_add(1, Ordering::Relaxed);
    let text =
        match serde_json::from_str::<Value>(&body) {
            Ok(v) => v.get("sql").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                bad("expected a JSON body {\"sql\": \"SELECT ...\"} or plain SQL")
            })?,
            Err(_) => body,
        };
    if text.trim().is_empty() {
        return Err(bad("empty SQL"));
    }
    let (root, hot, chain_id) = {
        let live = svc.live()?;
        (live.root().to_path_buf(), live.hot_blocks(), live.chain_id())
    };
    // At most `concurrency` queries run; the others wait for a slot within their time limit.
    let limits = svc.limits;
    let _slot = tokio::time::timeout(limits.timeout, svc.sql_slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            let e = SqlError::Busy(limits.concurrency, limits.timeout);
            ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        })?
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let hot = hot_batches(&hot, chain_id);
    let batches = run_sql(&root, hot, &text, limits).await.map_err(|e| match e {
        SqlError::NotAllowed(_) => ApiError(StatusCode::FORBIDDEN, e.to_string()),
        SqlError::Invalid(_) => bad(e.to_string()),
        SqlError::TooLarge(_) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        SqlError::Timeout(_) => ApiError(StatusCode::REQUEST_TIMEOUT, e.to_string()),
        e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let text = tidewater_queries::format_batches(&batches, tidewater_queries::Format::Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let rows_json: Value = serde_json::from_str(&text)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json_response(&json!({"row_count": rows, "rows": rows_json})))
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

/// The liquidity page: one self-contained HTML file (no build step, no CDN) that reads only the
/// public API.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        PAGE,
    )
        .into_response()
}

async fn token(State(svc): State<Service>, Path(address): Path<String>) -> ApiResult {
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

async fn health() -> Response {
    json_response(&json!({"status": "ok"}))
}

/// Whether the service is ready (what `/ready` says), and its parts: (ready, caught up,
/// degraded, head, confirmed).
fn readiness(svc: &Service) -> (bool, bool, bool, Option<u64>, Option<u64>) {
    let Ok(live) = svc.live() else { return (false, false, true, None, None) };
    let (head, confirmed, degraded) =
        (live.head_block(), live.confirmed().map(|c| c.0), live.is_degraded());
    let caught_up = (svc.caught_up)();
    (caught_up && !degraded && head.is_some(), caught_up, degraded, head, confirmed)
}

async fn ready(State(svc): State<Service>) -> Response {
    let (ok, caught_up, degraded, head, confirmed) = readiness(&svc);
    let body = json!({
        "ready": ok,
        "caught_up": caught_up,
        "degraded": degraded,
        "head": head,
        "confirmed": confirmed,
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(svc): State<Service>) -> Response {
    use tidewater_chain::metrics::single;
    let mut out = String::new();
    (svc.metrics)(&mut out);
    let (hot, head, confirmed) = match svc.live() {
        Ok(live) => (live.hot_len(), live.head_block(), live.confirmed().map(|c| c.0)),
        Err(_) => (0, None, None),
    };
    single(
        &mut out,
        "tidewater_state_head_block",
        "Newest block in the live state.",
        "gauge",
        head.unwrap_or(0) as f64,
    );
    single(
        &mut out,
        "tidewater_state_confirmed_block",
        "Newest confirmed block in the live state.",
        "gauge",
        confirmed.unwrap_or(0) as f64,
    );
    single(
        &mut out,
        "tidewater_state_hot_blocks",
        "Unconfirmed blocks in the live state.",
        "gauge",
        hot as f64,
    );
    let (ok, _, degraded, _, _) = readiness(&svc);
    single(
        &mut out,
        "tidewater_ready",
        "1 when /ready answers 200: following the head, state not degraded.",
        "gauge",
        f64::from(u8::from(ok)),
    );
    single(
        &mut out,
        "tidewater_state_degraded",
        "1 when the live state missed updates or met an event it cannot take.",
        "gauge",
        f64::from(u8::from(degraded)),
    );
    let s = &svc.stats;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    single(
        &mut out,
        "tidewater_http_requests_total",
        "API requests served.",
        "counter",
        g(&s.requests),
    );
    single(
        &mut out,
        "tidewater_sql_queries_total",
        "POST /v1/sql queries.",
        "counter",
        g(&s.sql_queries),
    );
    single(
        &mut out,
        "tidewater_stream_clients",
        "Connected SSE clients.",
        "gauge",
        g(&s.stream_clients),
    );
    s.stream_delay.render(
        &mut out,
        "tidewater_stream_delay_seconds",
        "From an update reaching the live state to its SSE event being handed to a client.",
        "",
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn not_found() -> ApiError {
    missing("no such endpoint; see /openapi.json")
}

async fn openapi() -> Response {
    json_response(&crate::openapi::document())
}
