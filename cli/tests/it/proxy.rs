//! A fault-injecting proxy in front of the real node: it rejects large `eth_getLogs` ranges the
//! way providers do (Infura's hint, a hint equal to the request, no hint), and answers some
//! requests with 429 and 503. With [`Lies`] it also behaves like a lagging node behind a load
//! balancer: `[]` for some `eth_getLogs` calls, bodies cut short, 503s, hangs, and `finalized`
//! calls that fail.

use crate::util::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Random misbehaviour, each a probability per request (seeded: the seed is printed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lies {
    /// `eth_getLogs` answered `[]` (a node whose log index lags).
    pub empty_logs: f64,
    /// A body cut in the middle, then the connection closed.
    pub cut_body: f64,
    /// HTTP 503.
    pub unavailable: f64,
    /// No answer for `hang_ms`, then the connection closed.
    pub hang: f64,
    /// How long a hang lasts.
    pub hang_ms: u64,
    /// Every `eth_getBlockByNumber("finalized")` fails with a 503 while set.
    pub fail_finalized: bool,
    /// The log index lags the head by this many blocks: `eth_getLogs` touching a newer block
    /// answers `[]` (headers of those blocks are served).
    pub index_lag: u64,
    /// The first this many `eth_getLogs` answers holding logs, for a range and selectors from
    /// any contract (no address), are `[]`: a backend hiding one kind of request's logs.
    pub hide_open_topic_logs: u64,
    /// `(block, n)`: the first `n` `eth_getLogs` answers holding logs, for a range that holds
    /// `block`, are `[]`, whatever the filter.
    pub hide_block_logs: (u64, u64),
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub range_rejections: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub refused_while_down: AtomicU64,
    pub lied_empty: AtomicU64,
    pub cut: AtomicU64,
    pub hung: AtomicU64,
    pub receipts: AtomicU64,
    pub finalized_failed: AtomicU64,
}

pub struct Proxy {
    pub url: String,
    pub counters: Arc<Counters>,
    /// While set, every request gets a 503 (the node is "down").
    pub down: Arc<AtomicBool>,
    /// While set, `finalized` calls fail.
    pub fail_finalized: Arc<AtomicBool>,
    /// While set, every call but `eth_blockNumber` gets a 503: the head moves on, nothing else
    /// can be read (a provider failing under load).
    pub fail_except_head: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn hexnum(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16).unwrap_or(0)
}

impl Proxy {
    /// Forwards to `upstream`, refusing `eth_getLogs` spans above `max_span` blocks.
    pub fn start(upstream: String, max_span: u64) -> Self {
        Self::start_with(upstream, max_span, true)
    }

    /// As [`Proxy::start`]; `faults` enables the periodic 429/503 answers.
    pub fn start_with(upstream: String, max_span: u64, faults: bool) -> Self {
        Self::start_lying(upstream, max_span, faults, Lies::default())
    }

    /// As [`Proxy::start_with`], lying as `lies` says. The seed comes from `TIDEWATER_SEED`
    /// when set, and is printed either way.
    pub fn start_lying(upstream: String, max_span: u64, faults: bool, lies: Lies) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let fail_finalized = Arc::new(AtomicBool::new(lies.fail_finalized));
        let fail_except_head = Arc::new(AtomicBool::new(false));
        let seed = seed();
        eprintln!("proxy {url}: seed {seed} (set TIDEWATER_SEED to replay), lies {lies:?}");
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let (c, st, dn, ff) =
            (counters.clone(), stop.clone(), down.clone(), fail_finalized.clone());
        let feh = fail_except_head.clone();
        let to_hide = Arc::new(AtomicU64::new(lies.hide_open_topic_logs));
        let block_to_hide = Arc::new(AtomicU64::new(lies.hide_block_logs.1));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let ctx = Ctx {
                    upstream: upstream.clone(),
                    max_span,
                    c: c.clone(),
                    faults,
                    down: dn.clone(),
                    lies,
                    fail_finalized: ff.clone(),
                    fail_except_head: feh.clone(),
                    rng: rng.clone(),
                    to_hide: to_hide.clone(),
                    block_to_hide: block_to_hide.clone(),
                };
                std::thread::spawn(move || {
                    let _ = serve(conn, &ctx);
                });
            }
        });
        Self { url, counters, down, fail_finalized, fail_except_head, stop }
    }
}

/// The test's random seed: `TIDEWATER_SEED`, or a fresh one.
pub fn seed() -> u64 {
    std::env::var("TIDEWATER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

struct Ctx {
    upstream: String,
    max_span: u64,
    c: Arc<Counters>,
    faults: bool,
    down: Arc<AtomicBool>,
    lies: Lies,
    fail_finalized: Arc<AtomicBool>,
    fail_except_head: Arc<AtomicBool>,
    rng: Arc<Mutex<StdRng>>,
    /// Answers [`Lies::hide_open_topic_logs`] still hides.
    to_hide: Arc<AtomicU64>,
    /// Answers [`Lies::hide_block_logs`] still hides.
    block_to_hide: Arc<AtomicU64>,
}

impl Ctx {
    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().gen_bool(p.min(1.0))
    }
}

fn serve(conn: std::net::TcpStream, x: &Ctx) -> std::io::Result<()> {
    let c = &*x.c;
    let mut r = BufReader::new(conn.try_clone()?);
    // Headers and body go out in separate writes: without TCP_NODELAY, Nagle and delayed ACKs
    // would add ~40 ms to every answer.
    conn.set_nodelay(true)?;
    let mut w = conn;
    loop {
        let (first, headers) = read_head(&mut r)?;
        if first.is_empty() {
            return Ok(());
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let n = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let method = req["method"].as_str().unwrap_or("");
        if method == "eth_getBlockReceipts" || method == "eth_getTransactionReceipt" {
            c.receipts.fetch_add(1, Ordering::Relaxed);
        }
        let is_finalized = method == "eth_getBlockByNumber" && req["params"][0] == "finalized";
        if x.roll(x.lies.hang) {
            c.hung.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(x.lies.hang_ms));
            return Ok(());
        }
        let failing = x.fail_except_head.load(Ordering::Relaxed) && method != "eth_blockNumber";
        let (status, reply): (&str, Vec<u8>) = if x.down.load(Ordering::Relaxed) || failing {
            c.refused_while_down.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", b"node down".to_vec())
        } else if is_finalized && x.fail_finalized.load(Ordering::Relaxed) {
            c.finalized_failed.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", b"finalized unavailable".to_vec())
        } else if x.faults && n.is_multiple_of(11) {
            c.throttled.fetch_add(1, Ordering::Relaxed);
            ("429 Too Many Requests", b"{\"message\":\"slow down\"}".to_vec())
        } else if (x.faults && n.is_multiple_of(17)) || x.roll(x.lies.unavailable) {
            c.server_errors.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", b"upstream busy".to_vec())
        } else if method == "eth_getLogs" && (x.roll(x.lies.empty_logs) || not_indexed_yet(&req, x))
        {
            c.lied_empty.fetch_add(1, Ordering::Relaxed);
            if std::env::var_os("TIDEWATER_PROXY_TRACE").is_some() {
                eprintln!("proxy: [] to eth_getLogs {}", req["params"]);
            }
            (
                "200 OK",
                json!({"jsonrpc": "2.0", "id": req["id"], "result": []}).to_string().into_bytes(),
            )
        } else {
            match range_error(&req, x.max_span, c) {
                Some(err) => ("200 OK", err.to_string().into_bytes()),
                None => ("200 OK", hide_logs(&req, http_post(&x.upstream, &body)?, x)),
            }
        };
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        )?;
        if reply.len() > 2 && x.roll(x.lies.cut_body) {
            c.cut.fetch_add(1, Ordering::Relaxed);
            w.write_all(&reply[..reply.len() / 2])?;
            return Ok(()); // the connection closes mid-body
        }
        w.write_all(&reply)?;
    }
}

/// `reply`, or `[]` in its place while [`Lies::hide_block_logs`] or
/// [`Lies::hide_open_topic_logs`] has answers to hide and this is one.
fn hide_logs(req: &Value, reply: Vec<u8>, x: &Ctx) -> Vec<u8> {
    let f = &req["params"][0];
    let ranged = req["method"] == "eth_getLogs" && f.get("fromBlock").is_some();
    let (block, _) = x.lies.hide_block_logs;
    // Each lie that applies to this request, with the answers it still hides.
    let budgets = [
        (hexnum(&f["fromBlock"]) <= block && block <= hexnum(&f["toBlock"]), &x.block_to_hide),
        (f.get("address").is_none(), &x.to_hide),
    ];
    let take = |left: u64| left.checked_sub(1);
    let hidden = ranged
        && budgets.iter().any(|(applies, _)| *applies)
        && serde_json::from_slice::<Value>(&reply)
            .is_ok_and(|v| v["result"].as_array().is_some_and(|a| !a.is_empty()))
        && budgets.iter().any(|(applies, left)| {
            *applies && left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, take).is_ok()
        });
    if !hidden {
        return reply;
    }
    x.c.lied_empty.fetch_add(1, Ordering::Relaxed);
    json!({"jsonrpc": "2.0", "id": req["id"], "result": []}).to_string().into_bytes()
}

/// Whether an `eth_getLogs` request touches a block newer than the lagging index.
fn not_indexed_yet(req: &Value, x: &Ctx) -> bool {
    if x.lies.index_lag == 0 {
        return false;
    }
    let upstream = |m: &str, p: Value| -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": m, "params": p}).to_string();
        http_post(&x.upstream, body.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["result"].clone())
            .unwrap_or(Value::Null)
    };
    let head = hexnum(&upstream("eth_blockNumber", json!([])));
    let f = &req["params"][0];
    let newest = match f.get("blockHash") {
        Some(h) => hexnum(&upstream("eth_getBlockByHash", json!([h, false]))["number"]),
        None => hexnum(&f["toBlock"]),
    };
    let lagging = newest + x.lies.index_lag > head;
    if lagging {
        x.c.lied_empty.fetch_add(1, Ordering::Relaxed);
    }
    lagging
}

fn range_error(req: &Value, max_span: u64, c: &Counters) -> Option<Value> {
    if req["method"] != "eth_getLogs" {
        return None;
    }
    let f = &req["params"][0];
    f.get("fromBlock")?;
    let (from, to) = (hexnum(&f["fromBlock"]), hexnum(&f["toBlock"]));
    if to < from || to - from < max_span {
        return None;
    }
    let k = c.range_rejections.fetch_add(1, Ordering::Relaxed);
    let (code, message) = match k % 3 {
        // Infura: a usable hint.
        0 => (
            -32005,
            format!(
                "query returned more than 10000 results. Try with this block range [{:#x}, {:#x}].",
                from,
                from + max_span - 1
            ),
        ),
        // A hint equal to the failed request: following it would loop forever.
        1 => (
            -32602,
            format!(
                "Log response size exceeded. this block range should work: [{from:#x}, {to:#x}]"
            ),
        ),
        // No hint at all.
        _ => (-32005, "query returned more than 10000 results".to_string()),
    };
    Some(json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": code, "message": message}}))
}

#[test]
fn range_limiting_proxy_forces_splits_and_the_dataset_is_identical() {
    let net = Devnet::small();
    let direct = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--chunk-size", "100"]);
    args.extend(net.uniswap_flags());
    direct.ok(&args);

    let proxy = Proxy::start(net.url.clone(), 7);
    let t = TestCommand::new();
    let head = net.head().to_string();
    let mut args = s(&["backfill", "--data", "data", "--chunk-size", "100", "--to", &head]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    t.ok(&args);
    let c = &proxy.counters;
    assert!(c.range_rejections.load(Ordering::Relaxed) > 3, "the proxy forced no split");
    assert!(c.throttled.load(Ordering::Relaxed) > 0 && c.server_errors.load(Ordering::Relaxed) > 0);
    assert_same_dataset(&direct.path("data"), &t.path("data"));
}

/// Issue 8: a provider that answers `[]` at random (a lagging log index), cuts bodies, 503s and
/// hangs. The backfill either equals cryo's extraction from the node itself or fails with a
/// clear error; it never exits 0 short of a row.
#[test]
fn issue_8_a_lying_provider_never_costs_a_row() {
    let net = Devnet::small();
    let head = net.head();
    let lies = Lies {
        empty_logs: 0.15,
        cut_body: 0.03,
        unavailable: 0.03,
        hang: 0.01,
        hang_ms: 1_500,
        fail_finalized: false,
        index_lag: 0,
        hide_open_topic_logs: 0,
        hide_block_logs: (0, 0),
    };
    let proxy = Proxy::start_lying(net.url.clone(), 1_000_000, false, lies);
    let t = TestCommand::new();
    let head_s = head.to_string();
    let mut args = s(&[
        "backfill",
        "--data",
        "data",
        "--chunk-size",
        "10",
        "--log-range",
        "2",
        "--max-log-range",
        "2",
        "--to",
        &head_s,
        "--json",
        "--rpc-timeout-ms",
        "700",
    ]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    let out = t.run(&args);
    let c = &proxy.counters;
    let lied = c.lied_empty.load(Ordering::Relaxed);
    eprintln!(
        "proxy: {} requests, {lied} empty answers, {} cut, {} hung, {} 503, {} receipt calls",
        c.requests.load(Ordering::Relaxed),
        c.cut.load(Ordering::Relaxed),
        c.hung.load(Ordering::Relaxed),
        c.server_errors.load(Ordering::Relaxed),
        c.receipts.load(Ordering::Relaxed)
    );
    assert!(lied > 10, "the proxy told too few lies to test anything ({lied})");
    if !out.status.success() {
        // Allowed, but only as a clear failure with nothing half-written.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
        t.ok(&s(&["verify", "--data", "data"]));
        return;
    }
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("summary: {summary}");
    crate::oracle::assert_logs_match_cryo(&net, &t, &t.path("data"), head);
    // The decoded tables agree too: the same as a backfill straight from the node.
    let direct = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--chunk-size", "25", "--to", &head_s]);
    args.extend(net.uniswap_flags());
    direct.ok(&args);
    assert_same_dataset(&direct.path("data"), &t.path("data"));
}

/// Issue 8: `run` (backfill, then the tail) through a provider whose log index lags the head by
/// two blocks and that answers `[]` at random, cuts bodies, 503s and hangs, while swaps are
/// mined: the dataset equals a fresh backfill of the canonical chain from the node itself.
#[test]
fn issue_8_a_tail_through_a_lying_provider_equals_a_fresh_backfill() {
    use rand::SeedableRng;
    let net = Devnet::small();
    let lies = Lies {
        empty_logs: 0.15,
        cut_body: 0.02,
        unavailable: 0.03,
        hang: 0.005,
        hang_ms: 1_500,
        fail_finalized: false,
        index_lag: 2,
        hide_open_topic_logs: 0,
        hide_block_logs: (0, 0),
    };
    let proxy = Proxy::start_lying(net.url.clone(), 1_000_000, false, lies);
    let t = TestCommand::new();
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--confirmations",
        "3",
        "--compact-blocks",
        "4",
        "--compact-interval-secs",
        "1",
        "--poll-interval-ms",
        "30",
        "--no-serve",
        "--rpc-timeout-ms",
        "700",
    ]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    let child = t
        .cmd()
        .env("TIDEWATER_LOG", "info")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(t.path("run.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut run = Running(Some(child));
    // The backfill first; then swaps while the tail follows, so it meets the lagging index.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(t.path("run.stderr"))
        .unwrap_or_default()
        .contains("tail started")
    {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the tail never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    for _ in 0..20 {
        crate::tail::swap(&net, &mut rng);
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(0..120)));
    }
    crate::tail::mine(&net, 4);
    let confirmed = net.head() - 3;
    crate::tail::wait_for_checkpoint(&t, confirmed);
    let (_, _) = crate::tail::stop(run.0.take().unwrap());
    let c = &proxy.counters;
    eprintln!(
        "proxy: {} requests, {} empty answers, {} cut, {} hung, {} 503, {} receipt calls",
        c.requests.load(Ordering::Relaxed),
        c.lied_empty.load(Ordering::Relaxed),
        c.cut.load(Ordering::Relaxed),
        c.hung.load(Ordering::Relaxed),
        c.server_errors.load(Ordering::Relaxed),
        c.receipts.load(Ordering::Relaxed)
    );
    assert!(c.lied_empty.load(Ordering::Relaxed) > 10, "too few lies to test anything");
    assert!(c.receipts.load(Ordering::Relaxed) > 0, "no empty answer was ever doubted");
    let end = checkpoint_of(&t);
    assert!(end >= confirmed);
    crate::tail::assert_equals_fresh_backfill(&net, &t, end);
}

fn checkpoint_of(t: &TestCommand) -> u64 {
    crate::tail::checkpoint(t).unwrap()
}
