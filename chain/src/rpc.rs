//! JSON-RPC over HTTP with a cap on requests in flight, a rate limit per provider, retries
//! with exponential backoff and full jitter, and failover across providers.

use crate::error::{is_range_message, parse_range_hint, Error, Result};
use crate::range::BlockRange;
use crate::types::{Header, Log, LogFilter};
use alloy_primitives::B256;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

/// Requests in flight across all providers. 16 keeps a local node busy on 2 cores without
/// queueing inside it; raise it for remote providers with high latency.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Attempts per request before giving up. With the default backoff this is about a minute of
/// trying, which rides out a provider restart.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// First backoff step; doubled each attempt up to [`DEFAULT_BACKOFF_MAX`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest single backoff wait.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Per-request HTTP timeout: large `eth_getLogs` answers take seconds on busy providers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Headers per JSON-RPC batch. 100 is accepted by every provider we know.
pub const HEADER_BATCH: usize = 100;

/// How to reach the providers and how hard to push them.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// Provider URLs, in order of preference.
    pub urls: Vec<String>,
    /// Requests in flight at most, across providers.
    pub concurrency: usize,
    /// Requests per second per provider, if limited.
    pub rps: Option<f64>,
    /// Attempts per request.
    pub max_attempts: u32,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Longest backoff step.
    pub backoff_max: Duration,
    /// HTTP timeout per request.
    pub timeout: Duration,
}

impl RpcConfig {
    /// Defaults for the given providers.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            concurrency: DEFAULT_CONCURRENCY,
            rps: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Counters for one provider.
#[derive(Debug)]
pub struct ProviderStats {
    /// Provider URL.
    pub url: String,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
}

#[derive(Debug)]
struct Provider {
    stats: ProviderStats,
    limiter: Option<RateLimiter>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    providers: Vec<Provider>,
    permits: Semaphore,
    cfg: RpcConfig,
    next_id: AtomicU64,
    preferred: AtomicUsize,
}

/// A cheaply clonable JSON-RPC client over one or more providers.
#[derive(Debug, Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

impl RpcClient {
    /// A client for the configured providers. Fails only if the HTTP client cannot be built.
    pub fn new(cfg: RpcConfig) -> Result<Self, reqwest::Error> {
        assert!(!cfg.urls.is_empty(), "invariant: at least one provider URL");
        let http = reqwest::Client::builder().timeout(cfg.timeout).build()?;
        let providers = cfg
            .urls
            .iter()
            .map(|url| Provider {
                stats: ProviderStats {
                    url: url.clone(),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                },
                limiter: cfg.rps.filter(|r| *r > 0.0).map(|rps| RateLimiter {
                    interval: Duration::from_secs_f64(1.0 / rps),
                    next: Mutex::new(Instant::now()),
                }),
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                providers,
                permits: Semaphore::new(cfg.concurrency.max(1)),
                cfg,
                next_id: AtomicU64::new(1),
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// Per-provider request and error counters.
    pub fn stats(&self) -> impl Iterator<Item = &ProviderStats> {
        self.inner.providers.iter().map(|p| &p.stats)
    }

    /// Renders the per-provider counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, pick) in [
            ("tidewater_rpc_requests_total", "JSON-RPC requests sent, per provider.", 0),
            ("tidewater_rpc_errors_total", "JSON-RPC requests that failed, per provider.", 1),
        ] {
            crate::metrics::header(out, name, help, "counter");
            for s in self.stats() {
                let v = if pick == 0 { &s.requests } else { &s.errors };
                let url = crate::metrics::label_value(&redact(&s.url));
                let _ = writeln!(out, "{name}{{provider=\"{url}\"}} {}", v.load(Ordering::Relaxed));
            }
        }
    }

    /// The first provider's URL (for messages).
    pub fn primary_url(&self) -> &str {
        &self.inner.cfg.urls[0]
    }

    /// One JSON-RPC call, retried and failed over as configured.
    pub async fn request<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T> {
        self.with_retry(method, |idx| self.send_one(idx, method, &params)).await
    }

    /// A JSON-RPC batch of calls to one method; answers in the order of `params`.
    pub async fn batch<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
    ) -> Result<Vec<T>> {
        self.with_retry(method, |idx| self.send_batch(idx, method, params)).await
    }

    async fn with_retry<T, F, Fut>(&self, method: &str, send: F) -> Result<T>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let inner = &self.inner;
        let mut attempt = 0u32;
        loop {
            let idx = inner.preferred.load(Ordering::Relaxed) % inner.providers.len();
            let result = send(idx).await;
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    inner.providers[idx].stats.errors.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    if attempt >= inner.cfg.max_attempts {
                        return Err(Error::RetriesExhausted {
                            attempts: attempt,
                            source: Box::new(e),
                        });
                    }
                    // Fail over: the next attempt goes to the next provider.
                    if inner.providers.len() > 1 {
                        let _ = inner.preferred.compare_exchange(
                            idx,
                            (idx + 1) % inner.providers.len(),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    let wait = backoff(attempt, inner.cfg.backoff_base, inner.cfg.backoff_max);
                    tracing::debug!(error = %e, method, attempt, ?wait, "retrying RPC call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sends one HTTP request (after the rate limiter and a concurrency permit) and returns
    /// the body of a 2xx answer.
    async fn post(&self, idx: usize, method: &str, body: &Value) -> Result<bytes::Bytes> {
        let inner = &self.inner;
        let provider = &inner.providers[idx];
        if let Some(l) = &provider.limiter {
            l.acquire().await;
        }
        let _permit = inner.permits.acquire().await.expect("invariant: semaphore never closed");
        provider.stats.requests.fetch_add(1, Ordering::Relaxed);
        let url = &provider.stats.url;
        let transport =
            |source| Error::Transport { provider: url.clone(), method: method.to_string(), source };
        let resp = inner.http.post(url).json(body).send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            // Some providers put a JSON-RPC error in a 4xx body; prefer it, it classifies better.
            if let Ok(r) = serde_json::from_slice::<Response<serde::de::IgnoredAny>>(&bytes) {
                if let Some(e) = r.error {
                    return Err(e.into_error(url, method));
                }
            }
            return Err(Error::HttpStatus {
                provider: url.clone(),
                method: method.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(bytes)
    }

    async fn send_one<T: DeserializeOwned>(
        &self,
        idx: usize,
        method: &str,
        params: &Value,
    ) -> Result<T> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let bytes = self.post(idx, method, &body).await?;
        let url = &self.inner.providers[idx].stats.url;
        let bad = |source| Error::BadResponse {
            provider: url.clone(),
            method: method.to_string(),
            source,
        };
        let r: Response<T> = serde_json::from_slice(&bytes).map_err(bad)?;
        if let Some(e) = r.error {
            return Err(e.into_error(url, method));
        }
        match r.result {
            Some(v) => Ok(v),
            // `null` results (an unknown block) deserialize through Option<T> in T itself.
            None => serde_json::from_value(Value::Null).map_err(bad),
        }
    }

    async fn send_batch<T: DeserializeOwned>(
        &self,
        idx: usize,
        method: &str,
        params: &[Value],
    ) -> Result<Vec<T>> {
        let items: Vec<Value> = params
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"jsonrpc": "2.0", "id": i, "method": method, "params": p}))
            .collect();
        let bytes = self.post(idx, method, &Value::Array(items)).await?;
        let url = &self.inner.providers[idx].stats.url;
        let bad = |source| Error::BadResponse {
            provider: url.clone(),
            method: method.to_string(),
            source,
        };
        let answers: Vec<Response<T>> = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                // A single error object instead of an array (batches refused).
                if let Ok(r) = serde_json::from_slice::<Response<serde::de::IgnoredAny>>(&bytes) {
                    if let Some(err) = r.error {
                        return Err(err.into_error(url, method));
                    }
                }
                return Err(bad(e));
            }
        };
        let mut out: Vec<Option<T>> = (0..params.len()).map(|_| None).collect();
        for a in answers {
            if let Some(e) = a.error {
                return Err(e.into_error(url, method));
            }
            let slot = a
                .id
                .and_then(|id| out.get_mut(id as usize))
                .ok_or_else(|| bad(serde::de::Error::custom("batch answer with an unknown id")))?;
            *slot = Some(match a.result {
                Some(v) => v,
                None => serde_json::from_value(Value::Null).map_err(bad)?,
            });
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| bad(serde::de::Error::custom("batch answer misses items"))))
            .collect()
    }

    /// `eth_chainId`.
    pub async fn chain_id(&self) -> Result<u64> {
        let v: alloy_primitives::U64 = self.request("eth_chainId", json!([])).await?;
        Ok(v.to::<u64>())
    }

    /// `eth_blockNumber`.
    pub async fn block_number(&self) -> Result<u64> {
        let v: alloy_primitives::U64 = self.request("eth_blockNumber", json!([])).await?;
        Ok(v.to::<u64>())
    }

    /// The header at a tag (`latest`, `finalized`, `safe`) or number; `None` if the node has none.
    pub async fn header_at(&self, tag: &str) -> Result<Option<Header>> {
        self.request("eth_getBlockByNumber", json!([tag, false])).await
    }

    /// Headers for every block of `range`, in order, batched.
    pub async fn headers(&self, range: BlockRange) -> Result<Vec<Header>> {
        let mut out = Vec::with_capacity(range.len() as usize);
        let batches = range.chunks(HEADER_BATCH as u64).map(|part| async move {
            let params: Vec<Value> =
                (part.start..=part.end).map(|n| json!([format!("{n:#x}"), false])).collect();
            let got: Vec<Option<Header>> = self.batch("eth_getBlockByNumber", &params).await?;
            got.into_iter()
                .zip(part.start..=part.end)
                .map(|(h, n)| match h {
                    Some(h) if h.number == n => Ok(h),
                    _ => Err(Error::MissingBlock {
                        provider: self.primary_url().to_string(),
                        block: n,
                    }),
                })
                .collect::<Result<Vec<_>>>()
        });
        let results = futures::future::try_join_all(batches).await?;
        for part in results {
            out.extend(part);
        }
        Ok(out)
    }

    /// One `eth_getLogs` over `range` (one call per address group). A "too many results"
    /// answer becomes [`Error::RangeTooLarge`] with the provider's hint, never a retry.
    pub async fn get_logs(&self, filter: &LogFilter, range: BlockRange) -> Result<Vec<Log>> {
        let mut out = Vec::new();
        for f in filter.to_json(range.start, range.end) {
            match self.request::<Vec<Log>>("eth_getLogs", json!([f])).await {
                Ok(mut logs) => out.append(&mut logs),
                Err(Error::Rpc { provider, code, message, .. })
                    if is_range_message(&message)
                        || code == -32005 && parse_range_hint(&message).is_some() =>
                {
                    let hint = parse_range_hint(&message);
                    return Err(Error::RangeTooLarge { provider, range, hint, message });
                }
                Err(Error::HttpStatus { provider, status: 413, .. }) => {
                    return Err(Error::RangeTooLarge {
                        provider,
                        range,
                        hint: None,
                        message: "HTTP 413".into(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `eth_getLogs` for one block by hash.
    pub async fn get_logs_by_hash(&self, filter: &LogFilter, hash: B256) -> Result<Vec<Log>> {
        let mut out = Vec::new();
        for mut f in filter.to_json(0, 0) {
            let obj = f.as_object_mut().expect("invariant: filter is an object");
            obj.remove("fromBlock");
            obj.remove("toBlock");
            obj.insert("blockHash".into(), json!(hash));
            let mut logs: Vec<Log> = self.request("eth_getLogs", json!([f])).await?;
            out.append(&mut logs);
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
struct Response<T> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default = "none")]
    result: Option<T>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

const fn none<T>() -> Option<T> {
    None
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl ErrorObject {
    fn into_error(self, url: &str, method: &str) -> Error {
        Error::Rpc {
            provider: url.to_string(),
            method: method.to_string(),
            code: self.code,
            message: self.message,
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, base * 2^attempt)]`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    let nanos = rand::thread_rng().gen_range(0..=cap.as_nanos() as u64);
    Duration::from_nanos(nanos)
}

/// A provider URL without its path and query, which often carry an API key.
pub(crate) fn redact(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let host = rest.split(['/', '?']).next().unwrap_or(rest);
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{}://{host}", &url[..i])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(10));
            assert!(d <= Duration::from_secs(10));
        }
        assert!(
            backoff(1, Duration::from_millis(100), Duration::from_secs(10))
                <= Duration::from_millis(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let l =
            RateLimiter { interval: Duration::from_millis(100), next: Mutex::new(Instant::now()) };
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }
}
