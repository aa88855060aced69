//! `run --ha`: two instances on one data directory, one writer. kill -9 of the leader at random
//! instants while swaps and reorgs flow: a standby takes over, and once everything is
//! confirmed the dataset equals a fresh backfill and the survivor's API equals the contracts.
//! A leader paused (SIGSTOP) past its lease and resumed commits nothing and stands by.

use crate::tail::*;
use crate::util::*;
use rand::{Rng, SeedableRng};
use std::process::Child;
use std::time::{Duration, Instant};

struct Instance {
    child: Child,
    api: String,
    port: u16,
}

fn start(t: &TestCommand, net: &Devnet, port: u16) -> Instance {
    start_with(t, net, port, &[])
}

/// The flags of the `run --ha` instances these tests start (lease 1.5 s).
pub(crate) const HA_FLAGS: [&str; 9] = [
    "--ha",
    "--ha-lease-ms",
    "1500",
    "--confirmations",
    "4",
    "--compact-blocks",
    "2",
    "--merge-blocks",
    "10",
];

fn start_with(t: &TestCommand, net: &Devnet, port: u16, extra: &[&str]) -> Instance {
    let listen = format!("127.0.0.1:{port}");
    let mut args = HA_FLAGS.to_vec();
    args.extend(["--listen", &listen]);
    args.extend(extra);
    let child = start_tail(t, net, &args);
    Instance { child, api: format!("http://127.0.0.1:{port}"), port }
}

fn role(i: &Instance) -> Option<String> {
    let url = format!("{}/ready", i.api);
    let (status, body) = http("GET", &url, &[], b"").ok()?;
    let r: serde_json::Value = serde_json::from_slice(&body).ok()?;
    crate::openapi::check("GET", &url, status, &r);
    r["role"].as_str().map(str::to_string)
}

fn leads(i: &Instance) -> bool {
    metric(&i.api, "tidewater_ha_leader") == Some(1.0) && role(i).as_deref() == Some("leader")
}

fn stands_by(i: &Instance) -> bool {
    metric(&i.api, "tidewater_ha_leader") == Some(0.0) && role(i).as_deref() == Some("standby")
}

/// Which of the two leads, once exactly one does (and the other serves as a standby).
fn leader_of(a: &Instance, b: &Instance) -> bool {
    let mut first = None;
    wait_for_within("one leader and one standby", Duration::from_secs(60), || {
        first = match (leads(a), leads(b)) {
            (true, false) if stands_by(b) => Some(true),
            (false, true) if stands_by(a) => Some(false),
            _ => None,
        };
        first.is_some()
    });
    first.unwrap()
}

#[test]
fn a_standby_takes_over_from_a_killed_leader_with_no_gap_and_no_duplicate() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut inst = [start(&t, &net, free_port()), start(&t, &net, free_port())];
    warm_up(&net, &mut rng);
    let mut takeovers = Vec::new();
    let mut logs = String::new();
    for _ in 0..4 {
        traffic(&net, &mut rng, 4..10, 200);
        // kill -9 the leader at whatever it was doing; the other takes over.
        let l = usize::from(!leader_of(&inst[0], &inst[1]));
        let killed = Instant::now();
        logs.push_str(&kill9(&mut inst[l].child));
        swap(&net, &mut rng);
        wait_for_within("the standby to take over", Duration::from_secs(30), || {
            leads(&inst[1 - l])
        });
        takeovers.push(killed.elapsed());
        // The killed one comes back as a standby.
        inst[l] = start(&t, &net, inst[l].port);
    }
    mine(&net, 8);
    let head = net.head();
    let survivor = &inst[usize::from(!leader_of(&inst[0], &inst[1]))];
    wait_for_checkpoint(&t, head - 4);
    let api = survivor.api.clone();
    let status: serde_json::Value =
        serde_json::from_str(&t.ok(&s(&["status", "--data", "data", "--json"]))).unwrap();
    assert_eq!(status["writer_lease"]["live"], true, "{status}");
    assert!(status["writer_lease"]["epoch"].as_u64().unwrap() >= 5, "four takeovers: {status}");
    wait_for("the survivor at the head", || {
        metric(&api, "tidewater_state_head_block") == Some(head as f64)
    });
    crate::serve::check_against_contracts(&api, &net, head);
    let [a, b] = inst;
    let (_, e1) = stop(a.child);
    let (_, e2) = stop(b.child);
    logs.push_str(&e1);
    logs.push_str(&e2);
    assert!(!logs.contains("panicked"), "{logs}");
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
    takeovers.sort();
    eprintln!("takeover after kill -9 (lease 1.5 s): {takeovers:?}");
}

#[test]
fn a_leader_paused_past_its_lease_commits_nothing_and_stands_by() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    let a = start(&t, &net, free_port());
    let b = start(&t, &net, free_port());
    warm_up(&net, &mut rng);
    let a_leads = leader_of(&a, &b);
    let (old, new) = if a_leads { (&a, &b) } else { (&b, &a) };
    let pid = old.child.id().to_string();
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill").args([s, &pid]).status().unwrap().success());
    };
    signal("-STOP");
    wait_for_within("the standby to take over", Duration::from_secs(30), || leads(new));
    // The new leader commits while the old one sleeps.
    for _ in 0..6 {
        swap(&net, &mut rng);
    }
    let before = checkpoint(&t);
    signal("-CONT");
    // The old leader wakes with blocks to commit: refused, it notices and stands by.
    let woke = Instant::now();
    while !stands_by(old) {
        if woke.elapsed() > Duration::from_secs(30) {
            // What the old leader did instead is in its log: show it.
            let (mut old, mut new) = if a_leads { (a, b) } else { (b, a) };
            let (e_old, e_new) = (kill9(&mut old.child), kill9(&mut new.child));
            panic!(
                "the old leader did not stand by within 30 s\n--- old:\n{e_old}\n--- new:\n{e_new}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(leads(new));
    mine(&net, 8);
    wait_for_checkpoint(&t, net.head() - 4);
    assert!(checkpoint(&t) >= before);
    let (old, new) = if a_leads { (a, b) } else { (b, a) };
    let (_, e_old) = stop(old.child);
    stop(new.child);
    assert!(
        e_old.contains("lost the writer lease; standing by"),
        "the old leader did not notice it lost the lease:\n{e_old}"
    );
    assert_equals_fresh_backfill(&net, &t, checkpoint(&t).unwrap());
}

/// Hashes of the top `depth` blocks, about to be orphaned by a reorg.
fn top_hashes(net: &Devnet, depth: u64) -> Vec<String> {
    let head = net.head();
    (head + 1 - depth..=head)
        .map(|n| {
            let b = rpc(
                &net.url,
                "eth_getBlockByNumber",
                serde_json::json!([format!("{n:#x}"), false]),
            );
            b["hash"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A standby follows the head itself (its own hot buffer, reorgs, the leader's rollback of a
/// deep reorg, its own stream), ready and at the head while the leader's checkpoint is behind;
/// when it takes over, a client that reconnects with its cursor misses nothing.
#[test]
fn a_standby_follows_the_head_and_its_stream_survives_the_takeover() {
    use crate::serve::{drain, hashes_with, listen, random_op, wait_synced, View};
    let net = Devnet::small();
    let t = TestCommand::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(35);
    let mut inst = [start(&t, &net, free_port()), start(&t, &net, free_port())];
    warm_up(&net, &mut rng);
    let l = usize::from(!leader_of(&inst[0], &inst[1]));
    let api = inst[1 - l].api.clone();
    wait_synced(&api, &net);
    let (rx, sock) = listen(&api, None);
    let mut events = Vec::new();
    let mut orphaned = std::collections::BTreeSet::new();
    let mut ahead = 0;
    for round in 0..10 {
        for _ in 0..rng.gen_range(1..3) {
            random_op(&net, &api, &mut rng);
        }
        let head = wait_synced(&api, &net);
        // At the head on its own: the leader has committed only what is confirmed.
        let (_, ready) = get_json(&format!("{api}/ready"));
        assert_eq!(ready["role"], "standby", "{ready}");
        if ready["confirmed"].as_u64().is_some_and(|c| c < head) {
            ahead += 1;
        }
        // Shallow reorgs in the hot window, and one deeper than the confirmations (4): the
        // leader rolls its commits back and the standby follows.
        if round % 2 == 1 {
            let depth = if round == 7 {
                // Once the standby has confirmed the leader's commits near the head: the reorg
                // orphans them too.
                let head = net.head();
                wait_for("the standby to confirm the leader's commits", || {
                    get_json(&format!("{api}/ready")).1["confirmed"]
                        .as_u64()
                        .is_some_and(|c| c + 6 >= head)
                });
                10
            } else {
                rng.gen_range(1..=3)
            };
            orphaned.extend(top_hashes(&net, depth));
            reorg(&net, depth, &mut rng);
            wait_synced(&api, &net);
        }
    }
    assert!(
        ahead >= 8,
        "the standby was at the head above the leader's checkpoint {ahead} times of 10"
    );
    let deep = metric(&api, "tidewater_deep_reorgs_total").unwrap_or(0.0);
    assert!(deep >= 1.0, "the standby did not follow the leader's rollback: {deep}");
    std::thread::sleep(Duration::from_millis(300));
    drain(&rx, &mut events);
    // Every orphaned block the standby's clients saw as pending was reverted, and the stream
    // folds into the standby's state, which is the contracts'.
    let (pending, reverted) = (hashes_with(&events, "pending"), hashes_with(&events, "reverted"));
    let seen: Vec<_> = orphaned.iter().filter(|h| pending.contains(*h)).collect();
    assert!(seen.len() >= 5, "too few orphaned blocks seen: {}", seen.len());
    for h in &seen {
        assert!(
            reverted.contains(*h),
            "orphaned block {h} was never reverted on the standby's stream"
        );
    }
    let mut view = View::default();
    for e in &events {
        view.fold(e);
    }
    assert_eq!(view, View::from_api(&api), "the folded stream differs from the standby's state");
    let head = wait_synced(&api, &net);
    crate::serve::check_against_contracts(&api, &net, head);

    // The leader dies: the standby takes over; its clients' streams end, and a reconnect with
    // the cursor gets the rest (the hot blocks it held reverted and applied again by the new
    // writer), with no gap in the ids.
    let mut logs = kill9(&mut inst[l].child);
    wait_for_within("the standby to take over", Duration::from_secs(30), || leads(&inst[1 - l]));
    drop(sock);
    drain(&rx, &mut events);
    let last = events.iter().rev().find_map(|e| e.id).unwrap();
    swap(&net, &mut rng);
    wait_synced(&api, &net);
    let (rx, sock) = listen(&api, Some(last));
    random_op(&net, &api, &mut rng);
    let head = wait_synced(&api, &net);
    std::thread::sleep(Duration::from_millis(300));
    drain(&rx, &mut events);
    drop(sock);
    assert_eq!(events[0].event, "snapshot");
    let ids: Vec<u64> = events[1..].iter().map(|e| e.id.unwrap()).collect();
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "stream ids jump from {} to {}", w[0], w[1]);
    }
    let mut view = View::default();
    for e in &events {
        view.fold(e);
    }
    assert_eq!(view, View::from_api(&api), "the stream across the takeover differs from the state");
    crate::serve::check_against_contracts(&api, &net, head);
    let [a, b] = inst;
    let survivor = if l == 0 { b } else { a };
    logs.push_str(&stop(survivor.child).1);
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn a_takeover_republishes_to_the_broker_without_loss_or_duplicate() {
    let net = Devnet::small();
    let nats = crate::broker::Nats::start();
    let t = TestCommand::new();
    let db = t.path("consumer.db");
    let mut rng = rand::rngs::StdRng::seed_from_u64(33);
    let url = nats.url();
    let publish = ["--publish", url.as_str()];
    let mut inst =
        [start_with(&t, &net, free_port(), &publish), start_with(&t, &net, free_port(), &publish)];
    let consumer = crate::broker::start_consumer(&t, &nats, &db, "16");
    warm_up(&net, &mut rng);
    for _ in 0..3 {
        traffic(&net, &mut rng, 3..8, 150);
        let l = usize::from(!leader_of(&inst[0], &inst[1]));
        kill9(&mut inst[l].child);
        // The chain moves on while the standby takes over: a reorg of what the dead one published.
        reorg(&net, rng.gen_range(1..=3), &mut rng);
        wait_for_within("the standby to take over", Duration::from_secs(30), || {
            leads(&inst[1 - l])
        });
        inst[l] = start_with(&t, &net, inst[l].port, &publish);
    }
    mine(&net, 3);
    let leader = &inst[usize::from(!leader_of(&inst[0], &inst[1]))];
    crate::broker::wait_settled(&net, &leader.api, &[&db]);
    crate::broker::assert_consumer_equals_contracts(&net, &[&db]);
    crate::broker::assert_applied_log_is_exactly_once(&net, &db);
    let [a, b] = inst;
    stop(a.child);
    stop(b.child);
    let mut c = consumer;
    kill9(&mut c);
}

#[test]
fn ha_with_an_unreachable_node_is_bad_input_and_writes_nothing() {
    let t = TestCommand::new();
    let out = t.run(&s(&[
        "run",
        "--ha",
        "--rpc",
        "http://127.0.0.1:1",
        "--uniswap-v3-factory",
        "0x0000000000000000000000000000000000000001",
        "--data",
        "d",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach RPC"));
    assert!(!t.path("d").exists(), "the data directory (or a lease in it) was created");
}
