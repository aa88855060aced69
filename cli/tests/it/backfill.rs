//! Exactly once: resumption after kill -9, gap filling, shards.

use crate::util::*;
use rand::Rng;
use std::process::Stdio;
use std::time::Duration;

fn clean_run(net: &Devnet, chunk: &str) -> TestCommand {
    let t = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--chunk-size", chunk]);
    args.extend(net.uniswap_flags());
    t.ok(&args);
    t
}

/// Runs `args` `runs` times, each killed with SIGKILL after a random number of milliseconds
/// in `after_ms` unless it ended first (seeded: printed; TIDEWATER_SEED replays a failure).
/// Returns how many runs were killed.
pub(crate) fn kill_9_at_random_instants(
    t: &TestCommand,
    args: &[String],
    runs: usize,
    after_ms: std::ops::Range<u64>,
) -> usize {
    let seed = crate::proxy::seed();
    eprintln!("seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..runs {
        let mut child =
            t.cmd().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(after_ms.clone())));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    kills
}

#[test]
fn kill_9_at_random_instants_then_rerun_equals_clean_run() {
    let net = Devnet::small();
    let clean = clean_run(&net, "10");
    let t = TestCommand::new();
    let mut args = s(&[
        "backfill",
        "--data",
        "data",
        "--chunk-size",
        "10",
        "--rps",
        "150",
        "--chunks-in-flight",
        "2",
    ]);
    args.extend(net.uniswap_flags());
    let kills = kill_9_at_random_instants(&t, &args, 6, 30..400);
    assert!(kills > 0, "no run was killed mid-way: the test did not test anything");
    let out = t.ok(&args);
    assert!(out.contains("chunks committed"), "{out}");
    assert_same_dataset(&clean.path("data"), &t.path("data"));
    assert_ordered_unique(&table(&t.path("data"), "logs"));
    t.ok(&s(&["verify", "--data", "data"]));
}

#[test]
fn overlapping_request_fills_only_the_gaps() {
    let net = Devnet::small();
    let head = net.head();
    let clean = clean_run(&net, "25");
    let t = TestCommand::new();
    let mut first = s(&[
        "backfill",
        "--data",
        "data",
        "--chunk-size",
        "25",
        "--from",
        "60",
        "--to",
        "140",
        "--json",
    ]);
    first.extend(net.uniswap_flags());
    t.ok(&first);
    let mut all = s(&["backfill", "--data", "data", "--chunk-size", "25", "--json"]);
    all.extend(net.uniswap_flags());
    let summary: serde_json::Value = serde_json::from_str(&t.ok(&all)).unwrap();
    // [0, 59] is 3 chunks (0-24, 25-49, 50-59), [141, head] starts mid-cell too.
    let expected_blocks = 60 + (head - 140);
    assert_eq!(
        summary["blocks"].as_u64().unwrap(),
        expected_blocks,
        "only the gaps are fetched: {summary}"
    );
    let again: serde_json::Value = serde_json::from_str(&t.ok(&all)).unwrap();
    assert_eq!(again["chunks_planned"], 0, "a complete range plans nothing");
    // Same rows as a clean run (chunk boundaries differ, rows do not).
    for tbl in ["logs", "swaps", "mints", "blocks", "pools_created"] {
        assert!(
            table(&clean.path("data"), tbl) == table(&t.path("data"), tbl),
            "table {tbl} differs"
        );
    }
}

#[test]
fn shards_split_the_range_without_overlap() {
    let net = Devnet::small();
    let clean = clean_run(&net, "20");
    let t = TestCommand::new();
    let mut children = Vec::new();
    for shard in ["0/3", "1/3", "2/3"] {
        let mut args = s(&[
            "backfill",
            "--data",
            "data",
            "--chunk-size",
            "20",
            "--shard",
            shard,
            "--to",
            &net.head().to_string(),
        ]);
        args.extend(net.uniswap_flags());
        children.push(
            t.cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_same_dataset(&clean.path("data"), &t.path("data"));
}

#[test]
fn a_dense_range_is_cut_into_pieces_of_about_chunk_logs_and_loses_nothing() {
    let net = Devnet::small();
    let clean = clean_run(&net, "100");
    let t = TestCommand::new();
    // The small devnet holds ~10 watched logs a block: 60 logs a piece cuts its 100-block
    // chunks into pieces of a few blocks once the first (probe) pieces told the density.
    let mut args =
        s(&["backfill", "--data", "data", "--chunk-size", "100", "--chunk-logs", "60", "--json"]);
    args.extend(net.uniswap_flags());
    let summary: serde_json::Value = serde_json::from_str(&t.ok(&args)).unwrap();
    assert_same_dataset(&clean.path("data"), &t.path("data"));
    assert_ordered_unique(&table(&t.path("data"), "logs"));
    t.ok(&s(&["verify", "--data", "data"]));
    // Per committed chunk: blocks and watched logs (the manifest's row counts).
    let status: serde_json::Value =
        serde_json::from_str(&t.ok(&s(&["status", "--data", "data", "--json"]))).unwrap();
    let chunks = status["chunks"].as_u64().unwrap();
    let plain = net.head().div_ceil(100);
    assert!(chunks > 2 * plain, "{chunks} chunks: the dense chunks were not cut ({summary})");
    assert_eq!(summary["chunks_committed"], summary["chunks_planned"], "{summary}");
    // Watched logs per committed chunk, from the manifest entries: about the target (the
    // density of the piece before is only an estimate of the next one's).
    let m = tidewater_storage::Manifest::load(&t.path("data")).unwrap();
    assert_eq!(m.chunks().len() as u64, chunks);
    let mut logs: Vec<u64> = m
        .chunks()
        .iter()
        .map(|c| {
            assert!(c.end - c.start < 100, "{c:?}");
            c.rows("logs")
        })
        .collect();
    logs.sort_unstable();
    let median = logs[logs.len() / 2];
    assert!((20..=180).contains(&median), "median {median} logs a chunk: {logs:?}");
}
