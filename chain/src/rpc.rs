//! JSON-RPC over HTTP with a cap on requests in flight, a rate limit per provider, retries
//! with exponential backoff and full jitter, and failover across providers.

use crate::error::{is_range_message, parse_range_hint, Error, Result};
use crate::provider_url::ProviderUrl;
use crate::range::BlockRange;
use crate::{Header, Log, LogFilter};
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
/// Longest `Retry-After` a provider can make a call wait.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How to reach the providers and how hard to push them.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// Provider URLs, in order of preference.
    pub urls: Vec<ProviderUrl>,
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
    pub fn new(urls: Vec<ProviderUrl>) -> Self {
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
    /// Waits for the slot of `calls` calls (a batch counts each of its calls, as providers
    /// bill and throttle them): the request goes at once when the limiter is idle, and the
    /// next one waits for all of them.
    async fn acquire(&self, calls: u32) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.interval * calls.max(1);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Counters for one provider.
#[derive(Debug)]
pub struct ProviderStats {
    /// Provider URL (redacted when printed).
    pub url: ProviderUrl,
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

    /// The first provider's URL (redacted when printed).
    pub fn primary_url(&self) -> &ProviderUrl {
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

    /// Number of providers.
    pub fn provider_count(&self) -> usize {
        self.inner.providers.len()
    }

    /// The provider that requests go to now (it moves on after a failure).
    pub fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed) % self.inner.providers.len()
    }

    async fn with_retry<T, F, Fut>(&self, method: &str, send: F) -> Result<T>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.with_retry_on(None, method, send).await
    }

    /// Retries `send`; on `pinned` only, or failing over across providers when `None`.
    async fn with_retry_on<T, F, Fut>(
        &self,
        pinned: Option<usize>,
        method: &str,
        send: F,
    ) -> Result<T>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let inner = &self.inner;
        let mut attempt = 0u32;
        loop {
            let idx = match pinned {
                Some(i) => i % inner.providers.len(),
                None => inner.preferred.load(Ordering::Relaxed) % inner.providers.len(),
            };
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
                    if pinned.is_none() && inner.providers.len() > 1 {
                        let _ = inner.preferred.compare_exchange(
                            idx,
                            (idx + 1) % inner.providers.len(),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    let mut wait = backoff(attempt, inner.cfg.backoff_base, inner.cfg.backoff_max);
                    if let Error::HttpStatus { retry_after: Some(hint), .. } = &e {
                        wait = wait.max(*hint);
                    }
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
            let calls = body.as_array().map_or(1, |a| u32::try_from(a.len()).unwrap_or(u32::MAX));
            l.acquire(calls).await;
        }
        let _permit = inner.permits.acquire().await.expect("invariant: semaphore never closed");
        provider.stats.requests.fetch_add(1, Ordering::Relaxed);
        let url = &provider.stats.url;
        // reqwest's errors print the URL they failed on: drop it, it may hold a key.
        let transport = |source: reqwest::Error| Error::Transport {
            provider: url.clone(),
            method: method.to_string(),
            source: source.without_url(),
        };
        let resp = inner.http.post(url.expose()).json(body).send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.as_u16() == 429 && retry_after.is_some() {
            // Throttled with a hint: wait as told (the body, if any, says the same).
            return Err(Error::HttpStatus {
                provider: url.clone(),
                method: method.to_string(),
                status: 429,
                retry_after,
            });
        }
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
                retry_after,
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
        let bytes = self.call(idx, method, params).await?;
        self.decode_one(idx, method, &bytes)
    }

    /// The body of one call's answer.
    async fn call(&self, idx: usize, method: &str, params: &Value) -> Result<bytes::Bytes> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.post(idx, method, &body).await
    }

    /// One `eth_getLogs` call: the answer parsed straight from its bytes when it has the plain
    /// shape of a success, else by serde like any other call.
    async fn send_logs(&self, idx: usize, params: &Value) -> Result<Vec<Log>> {
        let method = "eth_getLogs";
        let bytes = self.call(idx, method, params).await?;
        match crate::logs_json::parse_logs_answer(&bytes) {
            Some(logs) => Ok(logs),
            None => self.decode_one(idx, method, &bytes),
        }
    }

    /// The result (or the error) of a single call's answer.
    fn decode_one<T: DeserializeOwned>(&self, idx: usize, method: &str, bytes: &[u8]) -> Result<T> {
        let url = &self.inner.providers[idx].stats.url;
        let bad = |source| Error::BadResponse {
            provider: url.clone(),
            method: method.to_string(),
            source,
        };
        let r: Response<T> = serde_json::from_slice(bytes).map_err(bad)?;
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
        let numbers: Vec<u64> = (range.start..=range.end).collect();
        self.headers_of(&numbers).await
    }

    /// Headers of the blocks `numbers`, in the same order, batched.
    pub async fn headers_of(&self, numbers: &[u64]) -> Result<Vec<Header>> {
        let batches = numbers.chunks(HEADER_BATCH).map(|part| async move {
            let params: Vec<Value> =
                part.iter().map(|n| json!([format!("{n:#x}"), false])).collect();
            let got: Vec<Option<Header>> = self.batch("eth_getBlockByNumber", &params).await?;
            got.into_iter()
                .zip(part)
                .map(|(h, n)| match h {
                    Some(h) if h.number == *n => Ok(h),
                    _ => Err(Error::MissingBlock {
                        provider: self.primary_url().clone(),
                        block: *n,
                        block_hash: None,
                    }),
                })
                .collect::<Result<Vec<_>>>()
        });
        let results = futures::future::try_join_all(batches).await?;
        Ok(results.into_iter().flatten().collect())
    }

    /// One `eth_getLogs` over `range` (one call per address group). A "too many results"
    /// answer becomes [`Error::RangeTooLarge`] with the provider's hint, never a retry: it is
    /// classified inside the retry loop, before the loop can see it as a server fault.
    pub async fn get_logs(&self, filter: &LogFilter, range: BlockRange) -> Result<Vec<Log>> {
        self.get_logs_on(None, filter, range).await
    }

    /// [`RpcClient::get_logs`] on provider `pinned` only when given.
    pub async fn get_logs_on(
        &self,
        pinned: Option<usize>,
        filter: &LogFilter,
        range: BlockRange,
    ) -> Result<Vec<Log>> {
        let mut out = Vec::new();
        for f in filter.to_json(range.start, range.end) {
            out.append(&mut self.get_logs_json(pinned, f, range).await?);
        }
        Ok(out)
    }

    /// `eth_getLogs` with one filter object, `f` (over `range`).
    pub(crate) async fn get_logs_json(
        &self,
        pinned: Option<usize>,
        f: Value,
        range: BlockRange,
    ) -> Result<Vec<Log>> {
        let params = json!([f]);
        self.with_retry_on(pinned, "eth_getLogs", |idx| {
            let params = &params;
            async move {
                self.send_logs(idx, params).await.map_err(|e| classify_range_error(e, range))
            }
        })
        .await
    }

    /// `eth_getLogs` for one block by hash (retried, failing over across providers).
    pub async fn get_logs_by_hash(&self, filter: &LogFilter, hash: B256) -> Result<Vec<Log>> {
        self.get_logs_by_hash_on(None, filter, hash).await
    }

    /// `eth_getLogs` for one block by hash, on provider `pinned` only when given.
    pub async fn get_logs_by_hash_on(
        &self,
        pinned: Option<usize>,
        filter: &LogFilter,
        hash: B256,
    ) -> Result<Vec<Log>> {
        let mut out = Vec::new();
        for f in filter.to_json_by_hash(hash) {
            let params = json!([f]);
            let mut logs: Vec<Log> = self
                .with_retry_on(pinned, "eth_getLogs", |idx| self.send_logs(idx, &params))
                .await?;
            out.append(&mut logs);
        }
        Ok(out)
    }

    /// The logs of block `hash` that `filter` selects, read from the block's receipts: the
    /// block's own record, which a node that has the block always has in full, unlike its log
    /// index. `eth_getBlockReceipts` where the node has it, else one `eth_getTransactionReceipt`
    /// per transaction.
    pub async fn receipt_logs(&self, filter: &LogFilter, hash: B256) -> Result<Vec<Log>> {
        let missing = || Error::MissingBlock {
            provider: self.primary_url().clone(),
            block_hash: Some(hash),
            block: 0,
        };
        let receipts: Vec<Receipt> =
            match self.request::<Option<Vec<Receipt>>>("eth_getBlockReceipts", json!([hash])).await
            {
                Ok(Some(r)) => r,
                Ok(None) => return Err(missing()),
                Err(e) if e.is_method_unsupported() => {
                    let block: Option<BlockTxs> =
                        self.request("eth_getBlockByHash", json!([hash, false])).await?;
                    let txs = block.ok_or_else(missing)?.transactions;
                    let mut receipts = Vec::with_capacity(txs.len());
                    for part in txs.chunks(HEADER_BATCH) {
                        let params: Vec<Value> = part.iter().map(|t| json!([t])).collect();
                        let got: Vec<Option<Receipt>> =
                            self.batch("eth_getTransactionReceipt", &params).await?;
                        for r in got {
                            receipts.push(r.ok_or_else(missing)?);
                        }
                    }
                    receipts
                }
                Err(e) => return Err(e),
            };
        let mut logs: Vec<Log> =
            receipts.into_iter().flat_map(|r| r.logs).filter(|l| filter.matches(l)).collect();
        logs.sort_unstable_by_key(|l| l.log_index);
        Ok(logs)
    }
}

/// A "too many results" answer to `eth_getLogs` over `range`, as [`Error::RangeTooLarge`].
/// Some providers word it as a timeout or send it with code -32603; either way the range must
/// shrink, so this runs before the retry loop decides anything.
fn classify_range_error(e: Error, range: BlockRange) -> Error {
    match e {
        Error::Rpc { provider, code, message, .. }
            if is_range_message(&message)
                || (code == -32005 && parse_range_hint(&message).is_some())
                || (range.len() > 1 && is_timeout_message(&message)) =>
        {
            let hint = parse_range_hint(&message);
            Error::RangeTooLarge { provider, range, hint, message }
        }
        Error::HttpStatus { provider, status: 413, .. } => {
            Error::RangeTooLarge { provider, range, hint: None, message: "HTTP 413".into() }
        }
        e => e,
    }
}

fn is_timeout_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("timeout") || m.contains("timed out")
}

#[derive(serde::Deserialize)]
struct Receipt {
    logs: Vec<Log>,
}

#[derive(serde::Deserialize)]
struct BlockTxs {
    transactions: Vec<B256>,
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
    fn into_error(self, url: &ProviderUrl, method: &str) -> Error {
        Error::Rpc {
            provider: url.clone(),
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

/// Requests and errors per provider (URLs redacted).
impl crate::metrics::Collector for RpcClient {
    fn encode(&self, mut enc: crate::metrics::DescriptorEncoder<'_>) -> crate::metrics::Result {
        for (name, help, errors) in [
            ("tidewater_rpc_requests", "JSON-RPC requests sent, per provider.", false),
            ("tidewater_rpc_errors", "JSON-RPC requests that failed, per provider.", true),
        ] {
            let samples: Vec<_> = self
                .stats()
                .map(|s| {
                    let v = if errors { &s.errors } else { &s.requests };
                    (vec![("provider", s.url.redacted().to_string())], v.load(Ordering::Relaxed))
                })
                .collect();
            crate::metrics::counter_family(&mut enc, name, help, &samples)?;
        }
        Ok(())
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
            l.acquire(1).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        // A batch of 10 calls goes at once, and holds the next request for all ten.
        l.acquire(10).await;
        l.acquire(1).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_500));
    }
}
