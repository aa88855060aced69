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

/// Readiness: 503 while catching up with the head, or while the state is degraded.
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
pub(super) async fn ready(State(svc): State<Service>) -> Response {
    let (ok, caught_up, degraded, head, confirmed) = readiness(&svc);
    let body = Readiness { ready: ok, caught_up, degraded, head, confirmed };
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(super) async fn metrics(State(svc): State<Service>) -> Response {
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
pub(super) async fn openapi() -> Response {
    json_response(&crate::openapi::document())
}
