//! The tail on a real anvil: reorgs from anvil's own `anvil_reorg`, kill -9 restarts, a reorg
//! deeper than the watermark, and a bus subscriber folding the update stream.

use crate::util::*;
use alloy_sol_types::{sol, SolCall};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

sol! {
    struct ExactInputSingleParams {
        address tokenIn;
        address tokenOut;
        uint24 fee;
        address recipient;
        uint256 deadline;
        uint256 amountIn;
        uint256 amountOutMinimum;
        uint160 sqrtPriceLimitX96;
    }
    function exactInputSingle(ExactInputSingleParams params) external payable returns (uint256 amountOut);
}

pub(crate) const ACCOUNT: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// A swap transaction request through the real SwapRouter, on a random pool.
pub(crate) fn swap_tx(net: &Devnet, rng: &mut impl Rng) -> Value {
    let pools = net.deploy["pools"].as_array().unwrap();
    let p = &pools[rng.gen_range(0..pools.len())];
    let (t0, t1) = (p["token0"].as_str().unwrap(), p["token1"].as_str().unwrap());
    let (tin, tout) = if rng.gen_bool(0.5) { (t0, t1) } else { (t1, t0) };
    let call = exactInputSingleCall {
        params: ExactInputSingleParams {
            tokenIn: tin.parse().unwrap(),
            tokenOut: tout.parse().unwrap(),
            fee: alloy_sol_types::private::primitives::aliases::U24::from(
                p["fee"].as_u64().unwrap(),
            ),
            recipient: ACCOUNT.parse().unwrap(),
            deadline: alloy_sol_types::private::U256::from(1u64 << 40),
            amountIn: alloy_sol_types::private::U256::from(
                rng.gen_range(1u64..1_000_000) * 1_000_000_000_000,
            ),
            amountOutMinimum: alloy_sol_types::private::U256::ZERO,
            sqrtPriceLimitX96: alloy_sol_types::private::primitives::aliases::U160::ZERO,
        },
    };
    let data: String = call.abi_encode().iter().map(|b| format!("{b:02x}")).collect();
    json!({"from": ACCOUNT, "to": net.deploy["swap_router"], "data": format!("0x{data}"), "gas": "0x7a1200"})
}

pub(crate) fn swap(net: &Devnet, rng: &mut impl Rng) {
    wait_mined(net, rpc(&net.url, "eth_sendTransaction", json!([swap_tx(net, rng)])));
}

/// Sends a transaction from the test account and waits until it is mined.
pub(crate) fn send_tx(net: &Devnet, to: &str, data: String) {
    let tx = json!({"from": ACCOUNT, "to": to, "data": data, "gas": "0x7a1200"});
    wait_mined(net, rpc(&net.url, "eth_sendTransaction", json!([tx])));
}

/// The receipt of transaction `hash`, once mined.
pub(crate) fn wait_mined(net: &Devnet, hash: Value) -> Value {
    // anvil answers before the block is mined: wait for it, so reorg depths are what we think.
    let start = Instant::now();
    loop {
        let receipt = rpc(&net.url, "eth_getTransactionReceipt", json!([hash]));
        if !receipt.is_null() {
            return receipt;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "transaction {hash} not mined");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A reorg of `depth` blocks whose new branch carries fresh swaps.
pub(crate) fn reorg(net: &Devnet, depth: u64, rng: &mut impl Rng) {
    let txs: Vec<Value> =
        (0..rng.gen_range(1..=depth)).map(|i| json!([swap_tx(net, rng), i])).collect();
    if let Err(e) = try_rpc(&net.url, "anvil_reorg", json!([depth, txs.clone()])) {
        panic!("anvil_reorg depth {depth} at head {} with {} txs: {e}", net.head(), txs.len());
    }
}

/// anvil can only reorg blocks it mined itself (not ones loaded with --load-state).
pub(crate) fn warm_up(net: &Devnet, rng: &mut impl Rng) {
    for _ in 0..6 {
        swap(net, rng);
    }
}

/// A random number (in `rounds`) of swaps (70%) and shallow reorgs (30%), up to `pause_ms`
/// apart.
pub(crate) fn traffic(
    net: &Devnet,
    rng: &mut impl Rng,
    rounds: std::ops::Range<usize>,
    pause_ms: u64,
) {
    for _ in 0..rng.gen_range(rounds) {
        if rng.gen_bool(0.7) {
            swap(net, rng);
        } else {
            reorg(net, rng.gen_range(1..=3), rng);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..pause_ms)));
    }
}

pub(crate) fn mine(net: &Devnet, n: usize) {
    for _ in 0..n {
        rpc(&net.url, "evm_mine", json!([]));
    }
}

pub(crate) fn start_tail(t: &TestCommand, net: &Devnet, extra: &[&str]) -> Child {
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--poll-interval-ms",
        "20",
        "--compact-interval-secs",
        "0",
        "--listen",
        "127.0.0.1:0",
    ]);
    args.extend(net.uniswap_flags());
    args.extend(s(extra));
    t.cmd()
        .env("TIDEWATER_LOG", "info")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub(crate) fn checkpoint(t: &TestCommand) -> Option<u64> {
    let ds = tidewater_storage::Dataset::open(&t.path("data")).ok()?;
    ds.manifest().last().map(|c| c.end)
}

/// Waits until the tail has compacted everything at or below `block`.
pub(crate) fn wait_for_checkpoint(t: &TestCommand, block: u64) {
    wait_for_checkpoint_within(t, block, Duration::from_secs(60));
}

fn wait_for_checkpoint_within(t: &TestCommand, block: u64, limit: Duration) {
    let start = Instant::now();
    while checkpoint(t).is_none_or(|c| c < block) {
        assert!(
            start.elapsed() < limit,
            "the tail did not reach block {block}: at {:?}",
            checkpoint(t)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn stop(mut child: Child) -> (String, String) {
    unsafe_sigterm(&child);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    // A tail that died before the signal would make every later assertion meaningless.
    assert!(out.status.success(), "the tail exited with {}:\n{stderr}", out.status);
    (stdout, stderr)
}

fn unsafe_sigterm(child: &Child) {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
}

/// A fresh backfill of the canonical chain up to `to` equals what the tail wrote.
pub(crate) fn assert_equals_fresh_backfill(net: &Devnet, t: &TestCommand, to: u64) {
    let fresh = TestCommand::new();
    let mut args = s(&["backfill", "--data", "data", "--to", &to.to_string()]);
    args.extend(net.uniswap_flags());
    fresh.ok(&args);
    assert_same_dataset(&fresh.path("data"), &t.path("data"));
    assert_ordered_unique(&table(&t.path("data"), "logs"));
}

#[test]
fn reorgs_and_kill_9_restarts_end_equal_to_a_fresh_backfill() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let conf = "6";
    let mut child = start_tail(
        &t,
        &net,
        &["--confirmations", conf, "--compact-blocks", "3", "--merge-blocks", "10"],
    );
    warm_up(&net, &mut rng);
    let (mut reorgs, mut kills) = (0, 0);
    let mut logs = String::new();
    for i in 0..40 {
        let x: f64 = rng.gen();
        if i % 8 == 5 {
            child.kill().unwrap(); // SIGKILL, at whatever the tail was doing
            logs.push_str(&String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr));
            kills += 1;
            child = start_tail(
                &t,
                &net,
                &["--confirmations", conf, "--compact-blocks", "3", "--merge-blocks", "10"],
            );
        } else if x < 0.5 {
            swap(&net, &mut rng);
        } else if x < 0.85 {
            reorg(&net, rng.gen_range(1..=5), &mut rng);
            reorgs += 1;
        } else {
            mine(&net, 1);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..80)));
    }
    assert!(reorgs > 5 && kills > 2, "reorgs {reorgs}, kills {kills}");
    mine(&net, 8);
    let target = net.head() - 6;
    wait_for_checkpoint(&t, target);
    let (_, stderr) = stop(child);
    logs.push_str(&stderr);
    assert!(logs.contains("reorg handled"), "no tail process saw a reorg:\n{logs}");
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
}

#[test]
fn a_reorg_deeper_than_the_watermark_is_repaired() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let child =
        start_tail(&t, &net, &["--confirmations", "2", "--compact-blocks", "1", "--print-updates"]);
    wait_for_checkpoint(&t, 0);
    warm_up(&net, &mut rng);
    wait_for_checkpoint(&t, net.head() - 2);
    let before = checkpoint(&t).unwrap();
    // Five blocks replaced: three of them are already cold.
    reorg(&net, 5, &mut rng);
    mine(&net, 4);
    wait_for_checkpoint(&t, net.head() - 2);
    let (stdout, stderr) = stop(child);
    assert!(stderr.contains("deep reorg"), "the deep reorg was not reported:\n{stderr}");
    // Every confirmed block the reorg orphaned reaches subscribers as reverted.
    let updates: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reverted: std::collections::HashSet<&str> = updates
        .iter()
        .filter(|u| u["status"] == "reverted")
        .map(|u| u["block_hash"].as_str().unwrap())
        .collect();
    let mut orphaned_confirmed = 0;
    for u in updates.iter().filter(|u| u["status"] == "confirmed") {
        let n = u["block_number"].as_u64().unwrap();
        let canonical = rpc(&net.url, "eth_getBlockByNumber", json!([format!("{n:#x}"), false]));
        let hash = u["block_hash"].as_str().unwrap();
        if canonical["hash"].as_str() != Some(hash) {
            orphaned_confirmed += 1;
            assert!(
                reverted.contains(hash),
                "confirmed block {n} {hash} was orphaned but never reverted"
            );
        }
    }
    assert!(orphaned_confirmed > 0, "the reorg orphaned no confirmed block: not a deep reorg");
    assert!(checkpoint(&t).unwrap() >= before);
    let status: Value =
        serde_json::from_str(&t.ok(&s(&["status", "--data", "data", "--json", "--rpc", &net.url])))
            .unwrap();
    assert_eq!(status["checkpoint"]["block_number"].as_u64(), checkpoint(&t));
    assert_eq!(status["head"].as_u64(), Some(net.head()));
    assert_eq!(status["gaps"], json!([]));
    assert!(!status["deep_reorgs"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(status["lag_blocks"].as_u64(), Some(net.head() - checkpoint(&t).unwrap()));
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
}

#[test]
fn a_subscriber_folding_updates_ends_with_the_canonical_chain() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let child = start_tail(
        &t,
        &net,
        &[
            "--confirmations",
            "8",
            "--compact-blocks",
            "2",
            "--merge-blocks",
            "10",
            "--print-updates",
        ],
    );
    // The backfill's commit means the tail is about to follow the head.
    wait_for_checkpoint(&t, 0);
    std::thread::sleep(Duration::from_millis(300));
    let first = net.head() + 1;
    warm_up(&net, &mut rng);
    for _ in 0..25 {
        if rng.gen_bool(0.6) {
            swap(&net, &mut rng);
        } else {
            reorg(&net, rng.gen_range(1..=4), &mut rng);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..100)));
    }
    let head = net.head();
    // Poll interval is 20 ms: 1.5 s is ample for the tail to see the final head.
    std::thread::sleep(Duration::from_millis(1500));
    let (stdout, stderr) = stop(child);
    let mut folded: BTreeMap<u64, (String, Vec<Value>)> = BTreeMap::new();
    let mut updates_by_hash: BTreeMap<String, Value> = BTreeMap::new();
    let mut reverted = 0;
    for line in stdout.lines() {
        let u: Value = serde_json::from_str(line).unwrap();
        let n = u["block_number"].as_u64().unwrap();
        let hash = u["block_hash"].as_str().unwrap().to_string();
        match u["status"].as_str().unwrap() {
            "pending" => {
                assert!(!folded.contains_key(&n), "block {n} applied twice without a revert");
                updates_by_hash.insert(hash.clone(), u["events"].clone());
                folded.insert(n, (hash, u["logs"].as_array().unwrap().clone()));
            }
            "reverted" => {
                let (h, _) = folded.remove(&n).expect("revert of a block never applied");
                assert_eq!(h, hash, "revert of another block at {n}");
                assert!(folded.keys().all(|k| *k < n), "reverts must come newest first");
                reverted += 1;
            }
            "confirmed" => assert_eq!(folded.get(&n).map(|(h, _)| h.as_str()), Some(hash.as_str())),
            other => panic!("unknown status {other}"),
        }
    }
    assert!(reverted > 0, "no revert was published");
    // Small tail commits were merged: at most one chunk per complete cell of 10 blocks.
    let ds = tidewater_storage::Dataset::open(&t.path("data")).unwrap();
    let chunks = ds.manifest().chunks();
    let cp = chunks.last().unwrap().end;
    let tail_chunks: Vec<_> = chunks.iter().skip(1).collect();
    assert!(tail_chunks.len() >= 2, "the tail committed too little to check merging");
    for w in tail_chunks.windows(2) {
        let cell = w[0].end / 10;
        let complete = (cell + 1) * 10 - 1 <= cp;
        assert!(
            !(complete && w[1].start / 10 == cell && w[0].start / 10 == cell),
            "cell {cell} was not merged: {:?}\n{stderr}",
            chunks.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>()
        );
    }
    assert!(stderr.contains("merged cold chunks"), "no merge happened:\n{stderr}");
    let mut addresses = vec![net.factory(), net.position_manager()];
    addresses.extend(net.pools());
    for n in first..=head {
        let h = rpc(&net.url, "eth_getBlockByNumber", json!([format!("{n:#x}"), false]));
        let (hash, logs) =
            folded.get(&n).unwrap_or_else(|| panic!("block {n} missing from the fold"));
        assert_eq!(
            h["hash"].as_str().unwrap(),
            hash,
            "block {n} is not canonical in the fold\n{stderr}"
        );
        let canonical =
            rpc(&net.url, "eth_getLogs", json!([{"blockHash": hash, "address": addresses}]));
        let want: Vec<(u64, String)> = canonical
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (hex_u64(&l["logIndex"]), l["transactionHash"].as_str().unwrap().to_string()))
            .collect();
        let got: Vec<(u64, String)> = logs
            .iter()
            .map(|l| (l[0].as_u64().unwrap(), l[1].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(got, want, "logs of block {n}");
        // The block's decoded events: one Swap per Swap log of a factory pool (topic0 of
        // Swap(address,address,int256,int256,uint160,uint128,int24)).
        const SWAP_TOPIC: &str =
            "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67";
        let pools = net.pools();
        let swaps_in_block = canonical
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                l["topics"][0] == SWAP_TOPIC
                    && pools.contains(&l["address"].as_str().unwrap().to_lowercase())
            })
            .count() as u64;
        let events = &updates_by_hash[hash.as_str()];
        assert_eq!(
            events["swaps"].as_u64().unwrap_or(0),
            swaps_in_block,
            "decoded swaps of block {n}"
        );
    }
}

#[test]
fn the_tail_catches_up_without_gaps_after_the_node_was_unreachable() {
    let net = Devnet::small();
    let proxy = crate::proxy::Proxy::start_with(net.url.clone(), u64::MAX, false);
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--poll-interval-ms",
        "20",
        "--compact-interval-secs",
        "0",
        "--confirmations",
        "4",
        "--compact-blocks",
        "2",
        "--no-serve",
    ]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    let child = t
        .cmd()
        .env("TIDEWATER_LOG", "info")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&t, 0);
    warm_up(&net, &mut rng);
    std::thread::sleep(Duration::from_millis(300));
    proxy.down.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..8 {
        swap(&net, &mut rng);
    }
    std::thread::sleep(Duration::from_millis(1500));
    proxy.down.store(false, std::sync::atomic::Ordering::Relaxed);
    let refused = proxy.counters.refused_while_down.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        refused > 0,
        "the tail sent nothing while the node was down: the outage was not exercised"
    );
    for _ in 0..3 {
        swap(&net, &mut rng);
    }
    mine(&net, 5);
    wait_for_checkpoint(&t, net.head() - 4);
    stop(child);
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
}

#[test]
fn new_heads_over_websocket_wake_the_tail() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let ws = net.url.replace("http://", "ws://");
    // Polling every 10 minutes: only the newHeads subscription can make the tail move in time.
    let child = t
        .cmd()
        .env("TIDEWATER_LOG", "info")
        .args(s(&[
            "run",
            "--data",
            "data",
            "--poll-interval-ms",
            "600000",
            "--compact-interval-secs",
            "0",
        ]))
        .args(net.uniswap_flags())
        .args(s(&["--confirmations", "2", "--compact-blocks", "1", "--ws", &ws, "--no-serve"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&t, 0);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..6 {
        swap(&net, &mut rng);
    }
    wait_for_checkpoint_within(&t, net.head() - 2, Duration::from_secs(20));
    let (_, stderr) = stop(child);
    assert!(stderr.contains("subscribed to newHeads"), "{stderr}");
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
}
