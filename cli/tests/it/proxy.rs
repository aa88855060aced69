//! A fault-injecting proxy in front of the real node: it rejects large `eth_getLogs` ranges the
//! way providers do (Infura's hint, a hint equal to the request, no hint), and answers some
//! requests with 429 and 503.

use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub range_rejections: AtomicU64,
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub refused_while_down: AtomicU64,
}

pub struct Proxy {
    pub url: String,
    pub counters: Arc<Counters>,
    /// While set, every request gets a 503 (the node is "down").
    pub down: Arc<AtomicBool>,
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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (c, st, dn) = (counters.clone(), stop.clone(), down.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (c, upstream, dn) = (c.clone(), upstream.clone(), dn.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, max_span, &c, faults, &dn);
                });
            }
        });
        Self { url, counters, down, stop }
    }
}

fn serve(
    conn: std::net::TcpStream,
    upstream: &str,
    max_span: u64,
    c: &Counters,
    faults: bool,
    down: &AtomicBool,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
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
        let (status, reply): (&str, Vec<u8>) = if down.load(Ordering::Relaxed) {
            c.refused_while_down.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", b"node down".to_vec())
        } else if faults && n.is_multiple_of(11) {
            c.throttled.fetch_add(1, Ordering::Relaxed);
            ("429 Too Many Requests", b"{\"message\":\"slow down\"}".to_vec())
        } else if faults && n.is_multiple_of(17) {
            c.server_errors.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", b"upstream busy".to_vec())
        } else {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match range_error(&req, max_span, c) {
                Some(err) => ("200 OK", err.to_string().into_bytes()),
                None => ("200 OK", http_post(upstream, &body)?),
            }
        };
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        )?;
        w.write_all(&reply)?;
    }
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
