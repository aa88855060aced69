//! Test helpers: a real anvil devnet per test, the real `tidewater` binary, a blocking JSON-RPC
//! client, and dataset comparison.

use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh, which installs and builds the devnet")
    }))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running anvil, killed on drop.
pub struct Devnet {
    child: Child,
    pub url: String,
    pub deploy: Value,
    /// anvil's state cache (`--cache-path`), removed with the devnet.
    _cache: tempfile::TempDir,
}

impl Devnet {
    /// Anvil on the cached small chain (real Uniswap V3 contracts and traffic).
    pub fn small() -> Self {
        let dir = env_path("TIDEWATER_DEVNET_SMALL");
        let deploy: Value =
            serde_json::from_slice(&std::fs::read(dir.join("deploy.json")).unwrap()).unwrap();
        Self::start(&["--load-state", dir.join("state.json").to_str().unwrap()], deploy)
    }

    /// Anvil on the cached mainnet-shaped chain (hundreds of pools, noise contracts, a spoofer,
    /// saturated blooms, empty stretches).
    pub fn mainnet_shape_mini() -> Self {
        let dir = env_path("TIDEWATER_DEVNET_MAINNET_SHAPE_MINI");
        let deploy: Value =
            serde_json::from_slice(&std::fs::read(dir.join("deploy.json")).unwrap()).unwrap();
        // The chain's rules (devnet.sh's chain_flags: Cancun), as it was built.
        let rules = std::fs::read_to_string(dir.join("anvil.flags")).unwrap_or_default();
        let state = dir.join("state.json");
        let mut args: Vec<&str> = rules.split_whitespace().collect();
        args.extend(["--load-state", state.to_str().unwrap()]);
        Self::start(&args, deploy)
    }

    /// A fresh, empty anvil: another chain with the same chain id.
    pub fn empty() -> Self {
        Self::start(&[], Value::Null)
    }

    /// [`Devnet::empty`] on the Cancun rules, where empty blocks are mined at a steady ~480/s
    /// (under Prague each one hashes the history contract's state again and it slows down).
    pub fn empty_cancun() -> Self {
        Self::start(&["--hardfork", "cancun"], Value::Null)
    }

    fn start(extra: &[&str], deploy: Value) -> Self {
        let anvil = env_path("TIDEWATER_ANVIL");
        for _ in 0..5 {
            let port = free_port();
            let cache = tempfile::tempdir().unwrap();
            let child = Command::new(&anvil)
                .args([
                    "--port",
                    &port.to_string(),
                    "--code-size-limit",
                    "100000",
                    "--gas-limit",
                    "1000000000",
                    "--silent",
                    "--cache-path",
                    cache.path().to_str().unwrap(),
                ])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning anvil");
            let mut d = Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
                deploy: deploy.clone(),
                _cache: cache,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = d.child.try_wait() {
                    break; // port taken: try another
                }
                if try_rpc(&d.url, "eth_chainId", json!([])).is_ok() {
                    return d;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.child.kill();
        }
        panic!("anvil did not start");
    }

    pub fn factory(&self) -> String {
        self.deploy["factory"].as_str().unwrap().to_string()
    }

    pub fn position_manager(&self) -> String {
        self.deploy["position_manager"].as_str().unwrap().to_string()
    }

    pub fn pools(&self) -> Vec<String> {
        self.deploy["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap().to_lowercase())
            .collect()
    }

    pub fn head(&self) -> u64 {
        hex_u64(&rpc(&self.url, "eth_blockNumber", json!([])))
    }

    /// The flags that point a backfill at this devnet's Uniswap V3 deployment.
    pub fn uniswap_flags(&self) -> Vec<String> {
        self.uniswap_flags_via(&self.url)
    }

    /// [`Devnet::uniswap_flags`] through another RPC URL (a proxy in front of this node).
    pub fn uniswap_flags_via(&self, rpc: &str) -> Vec<String> {
        vec![
            "--rpc".into(),
            rpc.to_string(),
            "--uniswap-v3-factory".into(),
            self.factory(),
            "--uniswap-v3-position-manager".into(),
            self.position_manager(),
        ]
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hex_u64(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// One HTTP POST with a JSON body; returns the response body.
pub fn http_post(url: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    Ok(http("POST", url, &[], body)?.1)
}

/// An HTTP GET of `url` (`http://host:port/path?query`): status and body.
pub fn http_get(url: &str) -> (u16, Vec<u8>) {
    http("GET", url, &[], b"").unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// An HTTP GET whose body is JSON: status and value.
pub fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = http_get(url);
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: {status} {e}: {}", String::from_utf8_lossy(&body)));
    crate::openapi::check("GET", url, status, &v);
    (status, v)
}

/// One HTTP request (reqwest, one client shared by the tests, a connection per request):
/// status and body. A JSON
/// content type unless `headers` says otherwise.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        // No idle connections kept: the tests stop, pause and restart servers under it, and a
        // pooled connection to a server that went away would fail the next request.
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    });
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let mut req = client.request(method, url).body(body.to_vec());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        req = req.header("Content-Type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().map_err(std::io::Error::other)?;
    let status = r.status().as_u16();
    let body = r.bytes().map_err(std::io::Error::other)?;
    Ok((status, body.to_vec()))
}

/// One HTTP/1.1 request written byte for byte on a socket, with `Connection: close`: status
/// and body. Only for inputs a client library would normalise or refuse (`..` segments, stray
/// bytes in paths: the fuzz test of the API's inputs); everything else uses [`http`].
pub fn raw_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let (first, headers) = read_head(&mut r)?;
    let status = first.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut out = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
    } else if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        out.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut out)?;
    } else {
        r.read_to_end(&mut out)?;
    }
    Ok((status, out))
}

/// Several JSON-RPC calls in one batch request; results in order (panics on any error).
pub fn rpc_batch(url: &str, calls: &[(&str, Value)]) -> Vec<Value> {
    if calls.is_empty() {
        return vec![];
    }
    let body: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (m, p))| json!({"jsonrpc": "2.0", "id": i, "method": m, "params": p}))
        .collect();
    let resp = http_post(url, serde_json::to_vec(&body).unwrap().as_slice()).unwrap();
    let v: Vec<Value> = serde_json::from_slice(&resp).unwrap();
    let mut out = vec![Value::Null; calls.len()];
    for r in v {
        if let Some(e) = r.get("error") {
            panic!("batch call {}: {e}", r["id"]);
        }
        out[r["id"].as_u64().unwrap() as usize] = r["result"].clone();
    }
    out
}

/// Reads an HTTP head: the first line and lower-cased headers.
pub fn read_head(r: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((first, headers))
}

pub fn try_rpc(url: &str, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let resp = http_post(url, body.as_bytes()).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&resp).map_err(|e| e.to_string())?;
    if let Some(e) = v.get("error") {
        return Err(e.to_string());
    }
    Ok(v["result"].clone())
}

pub fn rpc(url: &str, method: &str, params: Value) -> Value {
    try_rpc(url, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// A temp directory and the real `tidewater` binary.
pub struct TestCommand {
    pub dir: tempfile::TempDir,
}

impl TestCommand {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tidewater"));
        c.current_dir(self.dir.path()).env_remove("ETH_RPC_URL").env("TIDEWATER_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[String]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[String]) -> String {
        succeeded(args, self.run(args))
    }

    /// `tidewater sql --data data --format csv QUERY`, asserting success: the CSV.
    pub fn sql_csv(&self, query: &str) -> String {
        self.ok(&s(&["sql", "--data", "data", "--format", "csv", query]))
    }
}

/// The stdout of `tidewater args`, asserting it succeeded.
pub fn succeeded(args: &[String], out: Output) -> String {
    assert!(
        out.status.success(),
        "tidewater {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Every row of `table` in the committed files, concatenated in block order.
pub fn table(data: &Path, table: &str) -> RecordBatch {
    let ds = tidewater_storage::Dataset::open(data).unwrap();
    let mut batches = Vec::new();
    for f in ds.files(table) {
        batches.extend(tidewater_storage::read_parquet(&f).unwrap());
    }
    let schema = if let Some(b) = batches.first() {
        b.schema()
    } else {
        let f = std::fs::File::open(ds.schema_file(table)).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .schema()
            .clone()
    };
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// Asserts two data directories hold the same rows in every table.
pub fn assert_same_dataset(a: &Path, b: &Path) {
    let ia = tidewater_storage::Dataset::open(a).unwrap();
    let ib = tidewater_storage::Dataset::open(b).unwrap();
    assert_eq!(ia.identity().tables, ib.identity().tables);
    for t in &ia.identity().tables {
        let (ta, tb) = (table(a, t), table(b, t));
        assert_eq!(ta.num_rows(), tb.num_rows(), "table {t}: row counts differ");
        assert!(ta == tb, "table {t}: rows differ");
    }
}

/// (block_number, log_index) pairs of a table, asserting they are strictly increasing.
pub fn assert_ordered_unique(batch: &RecordBatch) {
    use arrow::array::{UInt32Array, UInt64Array};
    let bn = batch
        .column_by_name("block_number")
        .unwrap()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap();
    let li =
        batch.column_by_name("log_index").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
    for i in 1..batch.num_rows() {
        assert!(
            (bn.value(i - 1), li.value(i - 1)) < (bn.value(i), li.value(i)),
            "rows {i}-1,{i} out of order or duplicated"
        );
    }
}

/// SHA-256-free fingerprint of a directory tree: every file's path and bytes.
pub fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A child process killed on drop.
pub struct Running(pub Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGTERM (a graceful stop) to `child`.
pub fn sigterm(child: &Child) {
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
}

/// Waits (30 s at most) for the process to exit; returns its status.
pub fn wait_exit(r: &mut Running) -> std::process::ExitStatus {
    let c = r.0.as_mut().unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            r.0 = None;
            return st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it holds (60 s at most).
pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_within(what, Duration::from_secs(60), f);
}

/// Polls `f` until it holds, `limit` at most.
pub fn wait_for_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the API at `api` answers `/ready` with 200.
pub fn is_ready(api: &str) -> bool {
    http("GET", &format!("{api}/ready"), &[], b"").map(|r| r.0).ok() == Some(200)
}

/// The value of metric `name` (its first sample) on the API's `/metrics`.
pub fn metric(api: &str, name: &str) -> Option<f64> {
    let (_, body) = http("GET", &format!("{api}/metrics"), &[], b"").ok()?;
    let text = String::from_utf8(body).ok()?;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// kill -9 of `c`, reaped; returns what it wrote to its (piped) stderr.
pub fn kill9(c: &mut std::process::Child) -> String {
    let _ = c.kill();
    let _ = c.wait();
    let mut err = String::new();
    if let Some(e) = c.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    err
}
