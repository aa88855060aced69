//! Operations: `/health`, `/ready`, `/metrics`, `/openapi.json`, and the liquidity page at `/`.

use super::*;

/// The liquidity page: one self-contained HTML file (no build step, no CDN) that reads only the
/// public API.
const PAGE: &str = include_str!("page.html");

/// The liquidity page (HTML): pools, a pool's distribution and positions with time travel and a
/// live view, operations; it reads only this API.
#[utoipa::path(get, path = "/", responses((status = 200, description = "HTML", content_type = "text/html")))]
pub(super) async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        PAGE,
    )
        .into_response()
}

/// `/health`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always "ok": the process serves.
    status: &'static str,
}

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub(super) async fn health() -> Response {
    json_response(&Health { status: "ok" })
}

/// `/ready`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Readiness {
    /// Following the head, state not degraded.
    ready: bool,
    /// The indexer has reached the chain head and stays within a few blocks of it.
    caught_up: bool,
    /// The live state missed updates, met an event it cannot take, or its writer failed.
    degraded: bool,
    /// Newest block in the live state.
    head: Option<u64>,
    /// Newest confirmed block.
    confirmed: Option<u64>,
    /// With `run --ha`: `leader` (writes) or `standby` (serves the committed state, takes over
    /// when the leader's lease expires).
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// Why it is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Whether the service is ready (what `/ready` says), and its parts: (ready, caught up,
/// degraded, head, confirmed).
fn readiness(svc: &Service) -> (bool, bool, bool, Option<u64>, Option<u64>) {
    readiness_of(&svc.live, &svc.caught_up)
}

fn readiness_of(
    live: &LiveReader,
    caught_up: &CaughtUpFn,
) -> (bool, bool, bool, Option<u64>, Option<u64>) {
    if live.writer_failed() {
        return (false, false, true, None, None);
    }
    let live = live.view();
    let (head, confirmed, degraded) =
        (live.head_block(), live.confirmed().map(|c| c.0), live.is_degraded());
    let caught_up = caught_up();
    (caught_up && !degraded && head.is_some(), caught_up, degraded, head, confirmed)
}

/// Readiness: 503 while catching up with the head, or while the state is degraded.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
pub(super) async fn ready(State(svc): State<Service>) -> Response {
    let (ok, caught_up, degraded, head, confirmed) = readiness(&svc);
    let role = svc.role.as_ref().map(|f| f());
    let blocked = svc.blocked.as_ref().and_then(|f| f());
    let ok = ok && blocked.is_none();
    let reason = blocked.or_else(|| {
        (!ok).then(|| {
            if degraded {
                "the live state is degraded (see the logs)".to_string()
            } else {
                "catching up with the chain head".to_string()
            }
        })
    });
    let body = Readiness { ready: ok, caught_up, degraded, head, confirmed, role, reason };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The API's own metrics: the live state, readiness, requests, SQL and the stream.
pub(super) struct ApiMetrics {
    pub(super) live: LiveReader,
    pub(super) caught_up: CaughtUpFn,
    pub(super) stats: Arc<ServerStats>,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl tidewater_chain::metrics::Collector for ApiMetrics {
    fn encode(
        &self,
        mut enc: tidewater_chain::metrics::DescriptorEncoder<'_>,
    ) -> tidewater_chain::metrics::Result {
        use tidewater_chain::metrics::{counter, gauge};
        let e = &mut enc;
        let (ok, _, degraded, head, confirmed) = readiness_of(&self.live, &self.caught_up);
        let hot = if self.live.writer_failed() { 0 } else { self.live.view().hot_len() };
        gauge(
            e,
            "tidewater_state_head_block",
            "Newest block in the live state.",
            head.unwrap_or(0) as f64,
        )?;
        gauge(
            e,
            "tidewater_state_confirmed_block",
            "Newest confirmed block in the live state.",
            confirmed.unwrap_or(0) as f64,
        )?;
        gauge(
            e,
            "tidewater_state_hot_blocks",
            "Unconfirmed blocks in the live state.",
            hot as f64,
        )?;
        gauge(
            e,
            "tidewater_ready",
            "1 when /ready answers 200: following the head, state not degraded.",
            f64::from(u8::from(ok)),
        )?;
        gauge(
            e,
            "tidewater_state_degraded",
            "1 when the live state missed updates or met an event it cannot take.",
            f64::from(u8::from(degraded)),
        )?;
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(e, "tidewater_http_requests", "API requests served.", n(&s.requests))?;
        counter(e, "tidewater_sql_queries", "POST /v1/sql queries.", n(&s.sql_queries))?;
        gauge(
            e,
            "tidewater_stream_clients",
            "Connected SSE clients.",
            n(&s.stream_clients) as f64,
        )?;
        s.stream_delay.encode(
            e,
            "tidewater_stream_delay_seconds",
            "From an update reaching the live state to its SSE event being handed to a client.",
        )
    }
}

/// Prometheus metrics (OpenMetrics text), from every stage this process runs.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(svc): State<Service>) -> ApiResult {
    let out = tidewater_chain::metrics::encode(&svc.metrics).map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}"))
    })?;
    Ok(([(header::CONTENT_TYPE, tidewater_chain::metrics::CONTENT_TYPE)], out).into_response())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub(super) async fn openapi() -> Response {
    json_response(&crate::openapi::document())
}
