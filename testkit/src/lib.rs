//! # tidewater-testkit
//!
//! Support for tests and benchmarks; not part of the product.
//!
//! [`ProviderSim`] is a JSON-RPC proxy in front of a real node that behaves like a hosted
//! provider, profile by profile ([`Profile`]): a cap on the logs of one `eth_getLogs` answer
//! and on its block span, answered with that provider's own error shape; a largest batch;
//! a rate limit answered with HTTP 429 and `Retry-After`; and a compute-unit bill per method
//! ([`compute_units`]). It counts calls, bytes and compute units per method ([`Stats`]), which
//! the benches print. The binary `tidewater-provider-sim` runs it standalone and serves the
//! counts at `GET /stats`.
//!
//! ```no_run
//! # async fn demo() -> eyre::Result<()> {
//! use tidewater_testkit::{Profile, ProviderSim};
//! let sim = ProviderSim::start("http://127.0.0.1:8545".into(), Profile::named("alchemy")?).await?;
//! println!("point the indexer at {}", sim.url());
//! let stats = sim.stats();
//! println!("{} compute units", stats.total().compute_units);
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

// The binary's dependency.
use clap as _;

/// Compute units of one call, from Alchemy's published table (the one most bills are quoted
/// in; other providers' credits differ in scale, not in shape). Unknown methods cost 26, the
/// table's price of an `eth_call`.
pub fn compute_units(method: &str) -> u64 {
    match method {
        "eth_chainId" | "net_version" => 0,
        "eth_blockNumber" => 10,
        "eth_getBlockByNumber" | "eth_getBlockByHash" => 16,
        "eth_getTransactionReceipt" => 15,
        "eth_getLogs" => 75,
        "eth_getBlockReceipts" => 500,
        "eth_call" => 26,
        _ => 26,
    }
}

/// Which provider's error words a refusal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// Alchemy: -32602 "Log response size exceeded ... this block range should work: [a, b]".
    Alchemy,
    /// Infura: -32005 "query returned more than 10000 results. Try with this block range [a, b]."
    Infura,
    /// QuickNode: -32602 "eth_getLogs is limited to a 10000 range".
    QuickNode,
}

/// How a simulated provider behaves.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Its name (`alchemy`, `infura`, `quicknode`, `local`).
    pub name: String,
    /// Most logs in one `eth_getLogs` answer.
    pub max_logs: Option<usize>,
    /// Most blocks one `eth_getLogs` may span.
    pub max_span: Option<u64>,
    /// Most calls in one batch.
    pub max_batch: Option<usize>,
    /// Calls per second (a call in a batch counts once); beyond, HTTP 429 with `Retry-After`.
    pub rps: Option<f64>,
    /// The words of a refusal.
    pub style: ErrorStyle,
}

impl Profile {
    /// A named profile: `alchemy` (10,000 logs an answer, batches of 1,000), `infura` (10,000
    /// logs, its hint), `quicknode` (10,000 blocks a span), `local` (no limit, counting only).
    pub fn named(name: &str) -> eyre::Result<Self> {
        let p = |max_logs, max_span, style| Self {
            name: name.to_string(),
            max_logs,
            max_span,
            max_batch: Some(1_000),
            rps: None,
            style,
        };
        Ok(match name {
            "alchemy" => p(Some(10_000), None, ErrorStyle::Alchemy),
            "infura" => p(Some(10_000), None, ErrorStyle::Infura),
            "quicknode" => p(None, Some(10_000), ErrorStyle::QuickNode),
            "local" => Self { max_batch: None, ..p(None, None, ErrorStyle::Infura) },
            other => eyre::bail!("unknown profile '{other}' (alchemy, infura, quicknode, local)"),
        })
    }

    /// The same profile with a rate limit.
    pub fn with_rps(mut self, rps: Option<f64>) -> Self {
        self.rps = rps;
        self
    }
}

/// Counts of one method.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MethodStats {
    /// Calls answered (refusals included, throttled ones not).
    pub calls: u64,
    /// Compute units billed.
    pub compute_units: u64,
    /// Request bytes (a batch's bytes are shared out evenly).
    pub bytes_in: u64,
    /// Answer bytes (likewise).
    pub bytes_out: u64,
}

impl MethodStats {
    fn add(&mut self, o: &Self) {
        self.calls += o.calls;
        self.compute_units += o.compute_units;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// What a simulator has seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Per method.
    pub methods: BTreeMap<String, MethodStats>,
    /// HTTP requests (a batch is one).
    pub http_requests: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// `eth_getLogs` refused for too many logs.
    pub too_many_logs: u64,
    /// `eth_getLogs` refused for too wide a span.
    pub span_refused: u64,
    /// Batches refused for their size.
    pub batch_refused: u64,
}

impl Stats {
    /// All methods together.
    pub fn total(&self) -> MethodStats {
        let mut t = MethodStats::default();
        for m in self.methods.values() {
            t.add(m);
        }
        t
    }

    /// One method's counts (zero when never called).
    pub fn method(&self, m: &str) -> MethodStats {
        self.methods.get(m).copied().unwrap_or_default()
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Shared {
    upstream: String,
    profile: Profile,
    http: reqwest::Client,
    stats: Mutex<Stats>,
    bucket: Mutex<Bucket>,
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct ProviderSim {
    url: String,
    shared: Arc<SharedHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The shared state, opaque to callers.
pub struct SharedHandle(Shared);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHandle").field("profile", &self.0.profile.name).finish()
    }
}

impl Drop for ProviderSim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl ProviderSim {
    /// Listens on a free local port, forwarding to `upstream`.
    pub async fn start(upstream: String, profile: Profile) -> eyre::Result<Self> {
        Self::start_on(upstream, profile, 0).await
    }

    /// Listens on `port` (0: any free one).
    pub async fn start_on(upstream: String, profile: Profile, port: u16) -> eyre::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let burst = profile.rps.unwrap_or(0.0).max(1.0);
        let shared = Arc::new(SharedHandle(Shared {
            upstream,
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            stats: Mutex::new(Stats::default()),
            bucket: Mutex::new(Bucket { tokens: burst, at: Instant::now() }),
            profile,
        }));
        let app = axum::Router::new()
            .route("/", axum::routing::post(rpc))
            .route("/stats", axum::routing::get(stats))
            .with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Not SpawnedTask: this crate knows no other of the workspace. The server stops on
        // the shutdown signal sent on drop.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self { url, shared, stop: Some(tx) })
    }

    /// The URL to point a client at.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.0.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

async fn stats(State(s): State<Arc<SharedHandle>>) -> axum::Json<Stats> {
    axum::Json(s.0.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
}

fn hexnum(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn rpc_error(id: &Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

impl Shared {
    /// Takes `n` calls from the bucket; `Err(seconds to wait)` when it is empty. A batch larger
    /// than the bucket passes when the bucket is full and leaves it in debt.
    fn take(&self, n: usize) -> Result<(), f64> {
        let Some(rps) = self.profile.rps.filter(|r| *r > 0.0) else { return Ok(()) };
        let mut b = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rps).min(rps.max(1.0));
        b.at = now;
        if b.tokens <= 0.0 || (b.tokens < n as f64 && b.tokens < rps.max(1.0)) {
            return Err(((n as f64 - b.tokens) / rps).max(0.05));
        }
        b.tokens -= n as f64;
        Ok(())
    }

    /// A refusal of an `eth_getLogs` call before it reaches the node (span too wide).
    fn refuse_span(&self, call: &Value) -> Option<Value> {
        let max = self.profile.max_span?;
        let f = &call["params"][0];
        let (from, to) = (hexnum(&f["fromBlock"])?, hexnum(&f["toBlock"])?);
        if to < from || to - from < max {
            return None;
        }
        self.with_stats(|s| s.span_refused += 1);
        Some(match self.profile.style {
            ErrorStyle::QuickNode => {
                rpc_error(&call["id"], -32602, format!("eth_getLogs is limited to a {max} range"))
            }
            _ => self.too_many(call, from, from + max - 1),
        })
    }

    /// The provider's "too many results" answer, hinting `[from, hint_end]`.
    fn too_many(&self, call: &Value, from: u64, hint_end: u64) -> Value {
        let cap = self.profile.max_logs.unwrap_or(10_000);
        match self.profile.style {
            ErrorStyle::Alchemy => rpc_error(
                &call["id"],
                -32602,
                format!("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit on the response size, or you can request any block range with a cap of {}K logs in the response. Based on your parameters and the response size limit, this block range should work: [{from:#x}, {hint_end:#x}]", cap / 1000),
            ),
            ErrorStyle::Infura => rpc_error(
                &call["id"],
                -32005,
                format!("query returned more than {cap} results. Try with this block range [{from:#x}, {hint_end:#x}]."),
            ),
            ErrorStyle::QuickNode => rpc_error(
                &call["id"],
                -32602,
                format!("query exceeds max results {cap}, retry with a smaller block range"),
            ),
        }
    }

    /// An answer from the node, replaced by a refusal when it holds too many logs.
    fn cap_logs(&self, call: &Value, answer: Value) -> Value {
        let Some(cap) = self.profile.max_logs else { return answer };
        let Some(logs) = answer["result"].as_array() else { return answer };
        if logs.len() <= cap {
            return answer;
        }
        self.with_stats(|s| s.too_many_logs += 1);
        let f = &call["params"][0];
        let from = hexnum(&f["fromBlock"]).unwrap_or(0);
        // The hint: up to the block before the one holding the (cap+1)-th log.
        let over = hexnum(&logs[cap]["blockNumber"]).unwrap_or(from);
        self.too_many(call, from, over.saturating_sub(1).max(from))
    }

    fn with_stats(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    async fn forward(&self, body: Vec<u8>) -> Result<Value, String> {
        let r = self
            .http
            .post(&self.upstream)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        r.json::<Value>().await.map_err(|e| e.without_url().to_string())
    }
}

async fn rpc(State(s): State<Arc<SharedHandle>>, body: Bytes) -> Response {
    let s = &s.0;
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                rpc_error(&Value::Null, -32700, e.to_string()).to_string(),
            )
                .into_response()
        }
    };
    let batch = req.is_array();
    let calls: Vec<Value> = match req {
        Value::Array(v) => v,
        one => vec![one],
    };
    s.with_stats(|st| st.http_requests += 1);
    if let Err(wait) = s.take(calls.len()) {
        s.with_stats(|st| st.throttled += 1);
        let body = rpc_error(
            &calls.first().map_or(Value::Null, |c| c["id"].clone()),
            429,
            "Your app has exceeded its compute units per second capacity.".into(),
        );
        let mut r = (StatusCode::TOO_MANY_REQUESTS, body.to_string()).into_response();
        let secs = wait.ceil().max(1.0) as u64;
        r.headers_mut().insert("retry-after", HeaderValue::from(secs));
        return r;
    }
    if batch && s.profile.max_batch.is_some_and(|m| calls.len() > m) {
        s.with_stats(|st| st.batch_refused += 1);
        let e = rpc_error(&Value::Null, -32600, "Batch size limit exceeded".into());
        return json_response(&e);
    }
    // Refusals answered here; the rest go to the node in one request.
    let mut answers: Vec<Option<Value>> = calls
        .iter()
        .map(|c| if c["method"] == "eth_getLogs" { s.refuse_span(c) } else { None })
        .collect();
    let to_send: Vec<&Value> =
        calls.iter().zip(&answers).filter(|(_, a)| a.is_none()).map(|(c, _)| c).collect();
    if !to_send.is_empty() {
        let upstream_body =
            if batch { serde_json::to_vec(&to_send) } else { serde_json::to_vec(to_send[0]) }
                .unwrap_or_default();
        let got = match s.forward(upstream_body).await {
            Ok(v) => v,
            Err(e) => return (StatusCode::BAD_GATEWAY, e).into_response(),
        };
        let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
        match got {
            Value::Array(v) => {
                for a in v {
                    by_id.insert(a["id"].to_string(), a);
                }
            }
            one if !batch => {
                by_id.insert(to_send[0]["id"].to_string(), one);
            }
            one => return json_response(&one),
        }
        for (c, a) in calls.iter().zip(answers.iter_mut()) {
            if a.is_none() {
                let got = by_id.remove(&c["id"].to_string()).unwrap_or_else(|| {
                    rpc_error(&c["id"], -32603, "no answer from the node".into())
                });
                *a = Some(if c["method"] == "eth_getLogs" { s.cap_logs(c, got) } else { got });
            }
        }
    }
    let answers: Vec<Value> = answers.into_iter().map(Option::unwrap_or_default).collect();
    let out =
        if batch { Value::Array(answers) } else { answers.into_iter().next().unwrap_or_default() };
    let bytes = out.to_string();
    let n = calls.len().max(1) as u64;
    s.with_stats(|st| {
        for c in &calls {
            let m = c["method"].as_str().unwrap_or("?");
            let e = st.methods.entry(m.to_string()).or_default();
            e.calls += 1;
            e.compute_units += compute_units(m);
            e.bytes_in += body.len() as u64 / n;
            e.bytes_out += bytes.len() as u64 / n;
        }
    });
    ([("content-type", "application/json")], bytes).into_response()
}

fn json_response(v: &Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_bill() {
        assert!(Profile::named("nope").is_err());
        assert_eq!(Profile::named("alchemy").unwrap().max_logs, Some(10_000));
        assert_eq!(Profile::named("quicknode").unwrap().max_span, Some(10_000));
        assert_eq!(compute_units("eth_getLogs"), 75);
        assert_eq!(compute_units("eth_getBlockByNumber"), 16);
        assert_eq!(compute_units("eth_blockNumber"), 10);
    }

    #[test]
    fn the_bucket_throttles_and_refills() {
        let s = Shared {
            upstream: String::new(),
            profile: Profile::named("local").unwrap().with_rps(Some(10.0)),
            http: reqwest::Client::new(),
            stats: Mutex::default(),
            bucket: Mutex::new(Bucket { tokens: 10.0, at: Instant::now() }),
        };
        for _ in 0..10 {
            assert!(s.take(1).is_ok());
        }
        assert!(s.take(1).is_err(), "an empty bucket throttles");
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(s.take(1).is_ok(), "a bucket refills");
    }
}
