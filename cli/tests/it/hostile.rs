//! Issue 8: input never crashes the process, no key leaks, a stop commits what is confirmed,
//! and `tidewater sql` cannot write into the dataset.

use crate::proxy::Proxy;
use crate::util::*;
use alloy_primitives::keccak256;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Deploys a contract whose every call emits `LOG2(topic0, calldata[0..32])` with
/// `calldata[32..64]` as data: a log of `Foo(uint256 indexed x, uint32 a)` when the word fits,
/// a malformed one when it does not.
fn deploy_emitter(url: &str, topic0: [u8; 32]) -> String {
    let mut runtime = vec![0x60, 0x20, 0x35, 0x60, 0x00, 0x52, 0x60, 0x00, 0x35, 0x7f];
    runtime.extend_from_slice(&topic0);
    runtime.extend_from_slice(&[0x60, 0x20, 0x60, 0x00, 0xa2, 0x00]);
    let mut init =
        vec![0x60, runtime.len() as u8, 0x80, 0x60, 0x0b, 0x60, 0x00, 0x39, 0x60, 0x00, 0xf3];
    init.extend_from_slice(&runtime);
    let from = rpc(url, "eth_accounts", json!([]))[0].as_str().unwrap().to_string();
    let tx = rpc(
        url,
        "eth_sendTransaction",
        json!([{"from": from, "data": format!("0x{}", hex(&init)), "gas": "0x100000"}]),
    );
    let receipt = receipt(url, &tx);
    receipt["contractAddress"].as_str().unwrap_or_else(|| panic!("{receipt}")).to_string()
}

/// The receipt of `tx`, once the node has mined it.
fn receipt(url: &str, tx: &Value) -> Value {
    let start = Instant::now();
    loop {
        let r = rpc(url, "eth_getTransactionReceipt", json!([tx]));
        if !r.is_null() {
            return r;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{tx} was never mined");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn call(url: &str, to: &str, x: u64, a_word: [u8; 32]) {
    let from = rpc(url, "eth_accounts", json!([]))[0].as_str().unwrap().to_string();
    let mut data = [0u8; 32].to_vec();
    data[24..].copy_from_slice(&x.to_be_bytes());
    data.extend_from_slice(&a_word);
    let tx = rpc(
        url,
        "eth_sendTransaction",
        json!([{"from": from, "to": to, "data": format!("0x{}", hex(&data)), "gas": "0x100000"}]),
    );
    let r = receipt(url, &tx);
    assert_eq!(r["status"], "0x1", "{r}");
}

fn word(v: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

#[test]
fn issue_8_a_log_wider_than_its_signature_is_counted_skipped_and_kept_raw() {
    let net = Devnet::empty();
    let topic0 = keccak256("Foo(uint256,uint32)").0;
    let emitter = deploy_emitter(&net.url, topic0);
    call(&net.url, &emitter, 1, word(5)); // fits uint32
    call(&net.url, &emitter, 2, word(1 << 40)); // a full word where uint32 is declared
    call(&net.url, &emitter, 3, word(u32::MAX as u128)); // fits, at the edge
    let t = TestCommand::new();
    let args = s(&[
        "backfill",
        "--rpc",
        &net.url,
        "--data",
        "data",
        "--contract",
        &emitter,
        "--event",
        "Foo(uint256 indexed x, uint32 a)",
        "--json",
    ]);
    let out = t.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["undecodable_logs"], 1, "{summary}");
    let skipped = &summary["undecodable"][0];
    assert_eq!(skipped["log_index"], 0, "{summary}");
    assert!(skipped["reason"].as_str().unwrap().contains("does not fit"), "{summary}");
    // The raw log is kept; the decoded table has the two that decode, with their values.
    let logs = t.sql_csv("SELECT count(*) FROM logs");
    assert_eq!(logs.lines().nth(1), Some("3"), "{logs}");
    let table = summary["rows"].as_object().unwrap().keys().find(|k| k.contains("foo")).cloned();
    let table = table.unwrap_or_else(|| panic!("no foo table in {summary}"));
    let rows = t.sql_csv(&format!("SELECT a FROM {table} ORDER BY block_number"));
    assert_eq!(rows.lines().skip(1).collect::<Vec<_>>(), vec!["5", &u32::MAX.to_string()]);
    assert_eq!(summary["rows"]["logs"], 3);
}

#[test]
fn issue_8_corrupt_files_give_clear_errors_not_panics() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--to", "60", "--chunk-size", "20"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    let ds = tidewater_storage::Dataset::open(&t.path("data")).unwrap();
    let logs_file = ds.files("logs")[0].clone();
    let entry = std::fs::read_dir(t.path("data/_manifest"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let check = |what: &str, cmd: &[&str], needle: &str| {
        let out = t.run(&s(cmd));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{what}: {cmd:?} {}: {err}", out.status);
        assert!(!err.contains("panicked"), "{what}: {cmd:?}: {err}");
        assert!(err.contains(needle), "{what}: {cmd:?}: {err}");
    };
    // A Parquet file cut short: every reader names the file.
    let bytes = std::fs::read(&logs_file).unwrap();
    std::fs::write(&logs_file, &bytes[..bytes.len() / 2]).unwrap();
    let name = logs_file.file_name().unwrap().to_string_lossy().to_string();
    check("cut parquet", &["state", "--data", "data"], &name);
    check("cut parquet", &["verify", "--data", "data"], &name);
    check("cut parquet", &["sql", "--data", "data", "SELECT count(*) FROM logs"], "error");
    std::fs::write(&logs_file, &bytes).unwrap();
    // A manifest entry cut short (a crash mid-write on a filesystem without rename).
    let text = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &text[..text.len() / 2]).unwrap();
    let name = entry.file_name().unwrap().to_string_lossy().to_string();
    check("cut manifest entry", &["status", "--data", "data"], &name);
    check("cut manifest entry", &["state", "--data", "data"], &name);
    // A hash that is not a hash.
    let mut v: Value = serde_json::from_slice(&text).unwrap();
    v["last_block_hash"] = json!("0xnothex");
    std::fs::write(&entry, v.to_string()).unwrap();
    check("bad hash in manifest entry", &["status", "--data", "data"], &name);
}

#[test]
fn issue_8_sigterm_commits_every_confirmed_block_and_finality_outages_hold_the_watermark() {
    let net = Devnet::small();
    let proxy = Proxy::start_with(net.url.clone(), 1_000_000, false);
    let t = TestCommand::new();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--compact-blocks",
        "100000",
        "--compact-interval-secs",
        "100000",
        "--poll-interval-ms",
        "50",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    let mut run = Running(Some(
        t.cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    ));
    wait_for("the tail to reach the head", || is_ready(&api));
    wait_for("a watermark", || metric(&api, "tidewater_watermark_block").is_some_and(|w| w > 0.0));
    let wm0 = metric(&api, "tidewater_watermark_block").unwrap();
    // The node's finalized block cannot be read for a while: the watermark holds where it
    // was (it must not fall back to head - depth), and the metrics say it is stale.
    proxy.fail_finalized.store(true, std::sync::atomic::Ordering::Relaxed);
    rpc(&net.url, "anvil_mine", json!([20]));
    let head = net.head() as f64;
    wait_for("the tail to see the new head", || {
        metric(&api, "tidewater_head_block") == Some(head)
            && metric(&api, "tidewater_finalized_stale") == Some(1.0)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(&api, "tidewater_watermark_block"), Some(wm0), "the watermark moved");
    // Finality is back: the watermark follows the node's finalized block again.
    proxy.fail_finalized.store(false, std::sync::atomic::Ordering::Relaxed);
    let finalized =
        hex_u64(&rpc(&net.url, "eth_getBlockByNumber", json!(["finalized", false]))["number"]);
    wait_for("the watermark to follow finality", || {
        metric(&api, "tidewater_watermark_block") == Some(finalized as f64)
            && metric(&api, "tidewater_finalized_stale") == Some(0.0)
    });
    let before =
        tidewater_storage::Dataset::open(&t.path("data")).unwrap().manifest().last().unwrap().end;
    assert!(before < finalized, "the batch thresholds should have kept blocks hot");
    // SIGTERM: the stop commits every confirmed block before the process exits.
    sigterm(run.0.as_ref().unwrap());
    let st = wait_exit(&mut run);
    assert!(st.success(), "{st}");
    let ds = tidewater_storage::Dataset::open(&t.path("data")).unwrap();
    assert_eq!(
        ds.manifest().last().unwrap().end,
        finalized,
        "the dataset stopped short of the watermark"
    );
    assert!(ds.manifest().gaps(0, finalized).is_empty());
}

#[test]
fn issue_8_no_key_from_a_provider_url_is_written_anywhere() {
    let net = Devnet::small();
    let proxy = Proxy::start_with(net.url.clone(), 1_000_000, false);
    let host = proxy.url.trim_start_matches("http://").to_string();
    let keyed = format!("http://user:SECRETKEY0@{host}/v2/SECRETKEY1?apikey=SECRETKEY2");
    // A dead first provider: every request starts with an error that names it.
    let dead = "http://admin:SECRETKEY3@127.0.0.1:9/v3/SECRETKEY4".to_string();
    let t = TestCommand::new();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let stderr_file = t.path("run.stderr");
    let mut run = Running(Some(
        t.cmd()
            .env("TIDEWATER_LOG", "debug")
            .args(s(&[
                "run",
                "--data",
                "data",
                "--rpc",
                &dead,
                "--rpc-timeout-ms",
                "500",
                "--confirmations",
                "3",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--ws",
                "ws://user:SECRETKEY5@127.0.0.1:9/ws/SECRETKEY5",
            ]))
            .args(net.uniswap_flags_via(&keyed))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap(),
    ));
    wait_for("the run to reach the head", || is_ready(&api));
    proxy.down.store(true, std::sync::atomic::Ordering::Relaxed);
    rpc(&net.url, "anvil_mine", json!([2]));
    std::thread::sleep(Duration::from_millis(800));
    proxy.down.store(false, std::sync::atomic::Ordering::Relaxed);
    for path in ["/metrics", "/health", "/ready", "/v1/pools"] {
        outputs.push(http("GET", &format!("{api}{path}"), &[], b"").unwrap().1);
    }
    let metrics = String::from_utf8(outputs[0].clone()).unwrap();
    assert!(metrics.contains("tidewater_rpc_errors_total"), "{metrics}");
    sigterm(run.0.as_ref().unwrap());
    assert!(wait_exit(&mut run).success());
    outputs.push(std::fs::read(&stderr_file).unwrap());
    let log = String::from_utf8_lossy(outputs.last().unwrap()).to_string();
    assert!(log.contains("127.0.0.1:9"), "the dead provider was never named: {log}");
    // Status, a backfill that cannot reach its provider, and a URL that is not a URL.
    for args in [
        s(&["status", "--data", "data", "--rpc", &keyed, "--json"]),
        s(&["status", "--data", "data", "--rpc", &dead]),
        s(&["backfill", "--data", "other", "--rpc", &dead, "--uniswap-v3-factory", &net.factory()]),
        s(&[
            "backfill",
            "--data",
            "other",
            "--rpc",
            "ftp://SECRETKEY6@h/x",
            "--uniswap-v3-factory",
            &net.factory(),
        ]),
        s(&[
            "backfill",
            "--data",
            "other",
            "--json",
            "--to",
            "10",
            "--rpc",
            &keyed,
            "--uniswap-v3-factory",
            &net.factory(),
        ]),
    ] {
        let out = t.run(&args);
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    // Every file the program wrote.
    for dir in [t.path("data"), t.path("other")] {
        for (path, bytes) in snapshot_dir(&dir) {
            outputs.push(path.to_string_lossy().as_bytes().to_vec());
            outputs.push(bytes);
        }
    }
    for o in &outputs {
        let text = String::from_utf8_lossy(o);
        assert!(!text.contains("SECRETKEY"), "a key leaked: {}", &text[..text.len().min(4000)]);
    }
}

#[test]
fn issue_8_tidewater_sql_cannot_write_into_the_dataset() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--to", "30"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    let before = snapshot_dir(&t.path("data"));
    let abs = t.path("data/logs/evil.parquet");
    for sql in [
        "COPY (SELECT 1) TO 'data/logs/x.parquet'".to_string(),
        format!("COPY (SELECT 1 AS a) TO '{}' (FORMAT parquet)", abs.display()),
        "SELECT 1; COPY logs TO 'data/copy.csv'".to_string(),
        "ATTACH 'data/x.duckdb' AS x".to_string(),
        "EXPORT DATABASE 'data/export'".to_string(),
        "SET temp_directory = 'data'".to_string(),
    ] {
        let out = t.run(&s(&["sql", "--data", "data", &sql]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sql}: {err}");
        assert!(err.contains("refused"), "{sql}: {err}");
    }
    assert_eq!(snapshot_dir(&t.path("data")), before, "the dataset changed");
    // Reads, and COPY to a file outside the dataset, still work.
    let out =
        t.ok(&s(&["sql", "--data", "data", "COPY (SELECT count(*) AS n FROM logs) TO 'n.csv'"]));
    let _ = out;
    assert!(std::fs::read_to_string(t.path("n.csv")).unwrap().starts_with('n'));
    assert_eq!(snapshot_dir(&t.path("data")), before, "the dataset changed");
}

/// `--ws wss://…`: newHeads over TLS (socat terminates TLS in front of anvil with a
/// certificate from a CA made here; the binary trusts it through `SSL_CERT_FILE`).
#[test]
fn issue_8_wss_new_heads_wake_the_tail() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(t.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(t.path("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=tidewater-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1");
    sh("openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 -extfile leaf.ext");
    let port = free_port();
    let anvil = net.url.trim_start_matches("http://").to_string();
    let _socat = Running(Some(
        std::process::Command::new("socat")
            .current_dir(t.dir.path())
            .arg(format!(
                "openssl-listen:{port},reuseaddr,fork,cert=leaf.pem,key=leaf.key,verify=0"
            ))
            .arg(format!("tcp:{anvil}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (installed by scripts/install.sh)"),
    ));
    std::thread::sleep(Duration::from_millis(300));
    let stderr_file = t.path("run.stderr");
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--confirmations",
        "3",
        "--no-serve",
        "--print-updates",
        // Polling so slow that only a newHeads notification can wake the tail in time.
        "--poll-interval-ms",
        "600000",
        "--ws",
        &format!("wss://127.0.0.1:{port}"),
    ]);
    args.extend(net.uniswap_flags());
    let mut child = t
        .cmd()
        .env("SSL_CERT_FILE", t.path("ca.pem"))
        .env("TIDEWATER_LOG", "info")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut run = Running(Some(child));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_for("the newHeads subscription", || {
        std::fs::read_to_string(&stderr_file).unwrap_or_default().contains("subscribed to newHeads")
    });
    let head0 = net.head();
    // Let the first poll pass, then mine: only the notification can bring the block in now.
    std::thread::sleep(Duration::from_millis(500));
    while rx.try_recv().is_ok() {}
    rpc(&net.url, "anvil_mine", json!([1]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            seen = v["status"] == "pending" && v["block_number"] == head0 + 1;
        }
    }
    let log = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert!(seen, "block {} never arrived through wss: {log}", head0 + 1);
    sigterm(run.0.as_ref().unwrap());
    assert!(wait_exit(&mut run).success());
}
