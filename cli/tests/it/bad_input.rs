//! Bad input: a clear message, a non-zero exit code, nothing written or changed.

use crate::util::*;
use std::io::Write as _;
use std::process::Stdio;

fn assert_usage_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, got {:?}: {stderr}",
        out.status.code()
    );
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
}

#[test]
fn unreachable_rpc_is_a_clear_error_and_writes_nothing() {
    let t = TestCommand::new();
    let port = free_port();
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        &format!("http://127.0.0.1:{port}"),
        "--data",
        "data",
        "--uniswap-v3-factory",
        "0x1f98431c8ad98523631ae4a59f267346ea31f984",
    ]));
    assert_usage_error(&out, "cannot reach RPC");
    assert!(!t.path("data").exists());
}

#[test]
fn from_after_to_is_rejected() {
    let t = TestCommand::new();
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        "http://127.0.0.1:1",
        "--data",
        "data",
        "--from",
        "10",
        "--to",
        "5",
        "--uniswap-v3-factory",
        "0x1f98431c8ad98523631ae4a59f267346ea31f984",
    ]));
    assert_usage_error(&out, "--from 10 is after --to 5");
    assert!(!t.path("data").exists());
}

#[test]
fn malformed_address_and_event_signature_are_rejected() {
    let t = TestCommand::new();
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        "http://127.0.0.1:1",
        "--data",
        "data",
        "--uniswap-v3-factory",
        "0x1234",
    ]));
    assert_usage_error(&out, "is not an address");
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        "http://127.0.0.1:1",
        "--data",
        "data",
        "--contract",
        "0x1f98431c8ad98523631ae4a59f267346ea31f984",
        "--event",
        "Transfer(adress from, uint256 value)",
    ]));
    assert_usage_error(&out, "invalid event signature");
    let out =
        t.run(&s(&["backfill", "--rpc", "http://127.0.0.1:1", "--data", "data", "--to", "soon"]));
    assert_usage_error(&out, "expected a block number");
    assert!(!t.path("data").exists());
}

#[test]
fn bad_config_file_is_rejected() {
    let t = TestCommand::new();
    std::fs::File::create(t.path("tidewater.toml"))
        .unwrap()
        .write_all(b"[chain]\nrcp = [\"http://x\"]\n")
        .unwrap();
    let out = t.run(&s(&["backfill", "--data", "data"]));
    assert_usage_error(&out, "tidewater.toml");
    assert!(!t.path("data").exists());
}

#[test]
fn data_directory_of_another_chain_is_left_untouched() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--to", "100"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    let before = snapshot_dir(&t.path("data"));

    let other = Devnet::empty();
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        &other.url,
        "--data",
        "data",
        "--to",
        "0",
        "--uniswap-v3-factory",
        &net.factory(),
        "--uniswap-v3-position-manager",
        &net.position_manager(),
    ]));
    assert_usage_error(&out, "data of another chain");
    // Different sources on the same chain: refused too.
    let out = t.run(&s(&[
        "backfill",
        "--rpc",
        &net.url,
        "--data",
        "data",
        "--to",
        "100",
        "--uniswap-v3-factory",
        &net.factory(),
    ]));
    assert_usage_error(&out, "sources");
    assert_eq!(before, snapshot_dir(&t.path("data")), "the data directory changed");
}

#[test]
fn a_second_writer_is_refused() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut slow = s(&["backfill", "--data", "data", "--chunk-size", "5", "--rps", "20"]);
    slow.extend(net.uniswap_flags());
    let mut first =
        t.cmd().args(&slow).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Wait until the first writer holds the directory.
    let start = std::time::Instant::now();
    while !t.path("data/dataset.json").exists() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut second = s(&["backfill", "--data", "data", "--chunk-size", "5"]);
    second.extend(net.uniswap_flags());
    let out = t.run(&second);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_usage_error(&out, "another writer");
}

#[test]
fn verify_finds_a_corrupt_file() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--chunk-size", "100"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    t.ok(&s(&["verify", "--data", "data"]));
    let victim = std::fs::read_dir(t.path("data/swaps")).unwrap().flatten().next().unwrap().path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let out = t.run(&s(&["verify", "--data", "data"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sql_on_a_missing_directory_and_bad_sql_are_clear_errors() {
    let t = TestCommand::new();
    let out = t.run(&s(&["sql", "--data", "nowhere", "SELECT 1"]));
    assert_usage_error(&out, "not a Tidewater data directory");
    assert!(!t.path("nowhere").exists());
    // Bad SQL over a real dataset: a clear error naming the problem, the dataset unchanged.
    let net = Devnet::small();
    let mut args = s(&["backfill", "--data", "data", "--to", "20"]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    let before = snapshot_dir(&t.path("data"));
    for (sql, needle) in [
        ("SELEC count(*) FROM logs", "syntax error"),
        ("SELECT nope FROM logs", "nope"),
        ("SELECT * FROM no_such_table", "no_such_table"),
    ] {
        let out = t.run(&s(&["sql", "--data", "data", sql]));
        assert_usage_error(&out, needle);
    }
    assert_eq!(snapshot_dir(&t.path("data")), before);
}
