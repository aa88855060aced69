//! Publishing to a real nats-server (JetStream on) and the reference consumer folding into
//! SQLite, on a real anvil with reorgs: the consumer's tables equal the contracts, every
//! orphaned block's updates were reverted, and nothing is applied twice, across kill -9 of the
//! publisher and the consumer, broker restarts and broker outages.

use crate::tail::*;
use crate::util::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prefixes of the metrics a run serves only with `--publish`.
pub(crate) const PUBLISH_METRICS: &[&str] = &["tidewater_publish_", "tidewater_broker_"];

/// Every publisher metric the alert rules name is served by a run with `--publish`.
fn assert_alerts_name_served_metrics(api: &str) {
    let (_, m) = http_get(&format!("{api}/metrics"));
    let served = String::from_utf8(m).unwrap();
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/alerts.yml"),
    )
    .unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| PUBLISH_METRICS.iter().any(|p| w.starts_with(p)))
        .collect();
    assert!(names.len() >= 4, "{names:?}");
    for n in names {
        let base = n.trim_end_matches("_bucket").trim_end_matches("_total");
        assert!(
            served.lines().any(|l| l.starts_with(&format!("# TYPE {base} "))),
            "alerts.yml uses {n}, which /metrics does not serve with --publish"
        );
    }
}

/// A nats-server with JetStream, its store in a directory that outlives restarts.
pub(crate) struct Nats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    pub(crate) fn start() -> Self {
        let mut n = Self { child: None, port: free_port(), store: tempfile::tempdir().unwrap() };
        n.up();
        n
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store).
    pub(crate) fn up(&mut self) {
        let bin = std::env::var("TIDEWATER_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/install.sh installs it)");
        self.child = Some(child);
        wait_for("nats-server", || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok());
    }

    /// Kills the server (SIGKILL).
    pub(crate) fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

fn start_run(t: &TestCommand, net: &Devnet, nats: &Nats, port: u16, conf: &str) -> Child {
    start_run_with(t, net, nats, port, conf, &[])
}

fn start_run_with(
    t: &TestCommand,
    net: &Devnet,
    nats: &Nats,
    port: u16,
    conf: &str,
    extra: &[&str],
) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let url = nats.url();
    let mut args = vec![
        "--confirmations",
        conf,
        "--compact-blocks",
        "2",
        "--merge-blocks",
        "10",
        "--listen",
        &listen,
        "--publish",
        &url,
    ];
    args.extend(extra);
    start_tail(t, net, &args)
}

pub(crate) fn start_consumer(t: &TestCommand, nats: &Nats, db: &Path, batch: &str) -> Child {
    start_consumer_with(t, nats, db, batch, &[])
}

fn start_consumer_with(
    t: &TestCommand,
    nats: &Nats,
    db: &Path,
    batch: &str,
    extra: &[&str],
) -> Child {
    t.cmd()
        .args(["consume", "--nats", &nats.url(), "--batch", batch])
        .args(extra)
        .arg("--into")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// kill -9; returns what the process logged.
fn kill(mut c: Child) -> String {
    kill9(&mut c)
}

fn ask(db: &Path, sql: &str) -> Vec<Vec<String>> {
    try_ask(db, sql).unwrap_or_else(|e| panic!("{}: {sql}: {e}", db.display()))
}

/// [`ask`], or the error (a database the consumer is still creating has no tables yet).
fn try_ask(db: &Path, sql: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare(sql)?;
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        v => format!("{v:?}"),
                    })
                })
                .collect()
        })?
        .collect::<Result<Vec<_>, _>>();
    rows
}

/// The consumer's tables in the API's JSON shape (pools with their ticks, positions).
fn consumer_state(db: &Path) -> (Vec<Value>, Vec<Value>) {
    let mut ticks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in
        ask(db, "SELECT pool, tick, liquidity_gross, liquidity_net FROM ticks ORDER BY pool, tick")
    {
        ticks.entry(r[0].clone()).or_default().push(json!({
            "tick": r[1].parse::<i64>().unwrap(), "liquidity_gross": r[2], "liquidity_net": r[3],
        }));
    }
    let pools =
        ask(db, "SELECT address, sqrt_price_x96, tick, liquidity FROM pools ORDER BY address")
            .into_iter()
            .map(|r| {
                json!({
                    "address": r[0], "sqrt_price_x96": r[1], "tick": r[2].parse::<i64>().unwrap(),
                    "liquidity": r[3], "ticks": ticks.remove(&r[0]).unwrap_or_default(),
                })
            })
            .collect();
    let positions =
        ask(db, "SELECT token_id, owner, tick_lower, tick_upper, liquidity FROM positions")
            .into_iter()
            .map(|r| {
                json!({
                    "token_id": r[0], "owner": r[1], "tick_lower": r[2].parse::<i64>().unwrap(),
                    "tick_upper": r[3].parse::<i64>().unwrap(), "liquidity": r[4],
                })
            })
            .collect();
    (pools, positions)
}

/// Waits until the API follows the node's head, the publisher has nothing left to send and
/// the consumer has applied everything.
pub(crate) fn wait_settled(net: &Devnet, api: &str, dbs: &[&PathBuf]) {
    wait_for_within("publisher and consumers caught up", Duration::from_secs(120), || {
        let head = net.head() as f64;
        if !dbs.iter().all(|db| db.exists()) {
            return false;
        }
        let cursor = dbs
            .iter()
            .map(|db| {
                try_ask(db, "SELECT max(stream_seq) FROM cursor")
                    .ok()
                    .and_then(|rows| rows.first().and_then(|r| r[0].parse::<f64>().ok()))
                    .unwrap_or(0.0)
            })
            .fold(f64::MAX, f64::min);
        metric(api, "tidewater_state_head_block") == Some(head)
            && metric(api, "tidewater_publish_backlog") == Some(0.0)
            && metric(api, "tidewater_publish_last_pool_sequence")
                .is_some_and(|s| s > 0.0 && cursor >= s)
    });
}

fn metric_with(api: &str, name: &str, label: &str) -> Option<f64> {
    let (_, body) = http("GET", &format!("{api}/metrics"), &[], b"").ok()?;
    let text = String::from_utf8(body).ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The consumer's table equals `slot0()`, `liquidity()`, `ticks()` and `positions()` at the
/// head, for every pool of the devnet.
pub(crate) fn assert_consumer_equals_contracts(net: &Devnet, dbs: &[&PathBuf]) {
    let (mut pools, mut positions) = (Vec::new(), Vec::new());
    for db in dbs {
        let (p, pos) = consumer_state(db);
        pools.extend(p);
        positions.extend(pos);
    }
    pools.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
    let mut want = net.pools();
    want.sort();
    let got: Vec<String> =
        pools.iter().map(|p| p["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, want, "the consumers hold every pool, each once");
    let (p, tk, pos) = crate::serve::check_state(net, net.head(), &pools, &positions);
    assert!(
        p >= 10 && tk >= 20 && pos >= 50,
        "too little was checked: {p} pools, {tk} ticks, {pos} positions"
    );
}

/// Each applied update once, in order per pool: a block's pending update for a pool comes
/// again only after a revert for that pool of it or of a newer block (a reorg deeper than the
/// watermark reverts its blocks' changes in the revert of the newest one), and every block no
/// longer canonical was reverted so after its last pending. Returns how many orphaned
/// (pool, block) updates were reverted.
pub(crate) fn assert_applied_log_is_exactly_once(net: &Devnet, db: &Path) -> usize {
    let rows = ask(
        db,
        "SELECT stream_seq, pool, status, block_number, block_hash, msg_id FROM applied ORDER BY stream_seq",
    );
    // (pool, hash) -> (block number, reverted since its last pending)
    let mut pending: HashMap<(String, String), (u64, bool)> = HashMap::new();
    let log_of = |pool: &str| {
        rows.iter().filter(|x| x[1] == pool).map(|x| x.join(" ")).collect::<Vec<_>>().join("\n")
    };
    for r in &rows {
        let n: u64 = r[3].parse().unwrap();
        match r[2].as_str() {
            "resync" => {}
            "pending" => {
                let key = (r[1].clone(), r[4].clone());
                if let Some((_, reverted)) = pending.get(&key) {
                    assert!(
                        *reverted,
                        "stream seq {}: block {n} {} applied again for pool {} without a revert:\n{}",
                        r[0],
                        r[4],
                        r[1],
                        log_of(&r[1])
                    );
                }
                pending.insert(key, (n, false));
            }
            "reverted" => {
                for ((pool, _), (m, reverted)) in pending.iter_mut() {
                    if *pool == r[1] && *m <= n {
                        *reverted = true;
                    }
                }
            }
            other => panic!("unknown status {other}"),
        }
    }
    let mut canonical: HashMap<u64, String> = HashMap::new();
    let mut orphans = 0;
    for ((pool, hash), (n, reverted)) in &pending {
        let c = canonical.entry(*n).or_insert_with(|| {
            rpc(&net.url, "eth_getBlockByNumber", json!([format!("{n:#x}"), false]))["hash"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        if c != hash {
            assert!(
                *reverted,
                "orphaned block {n} {hash} of pool {pool} was never reverted:\n{}",
                log_of(pool)
            );
            orphans += 1;
        }
    }
    orphans
}

#[test]
fn published_updates_fold_to_the_contracts_through_reorgs_kills_and_broker_restarts() {
    let net = Devnet::small();
    let mut nats = Nats::start();
    let t = TestCommand::new();
    let db = t.path("consumer.db");
    let seed = std::env::var("TIDEWATER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let conf = "6";
    let mut run = start_run(&t, &net, &nats, port, conf);
    let mut consumer = start_consumer(&t, &nats, &db, "7");
    warm_up(&net, &mut rng);
    let (mut reorgs, mut kills) = (0, [0; 3]);
    let mut logs = String::new();
    for i in 0..72 {
        let x: f64 = rng.gen();
        match i % 12 {
            3 => {
                logs.push_str(&kill(run)); // kill -9 of the publisher, at whatever it was doing
                                           // The chain moves on while it is down: blocks it published are orphaned.
                if rng.gen_bool(0.7) {
                    reorg(&net, rng.gen_range(1..=4), &mut rng);
                    reorgs += 1;
                }
                run = start_run(&t, &net, &nats, port, conf);
                kills[0] += 1;
            }
            7 => {
                nats.down();
                std::thread::sleep(Duration::from_millis(rng.gen_range(100..1500)));
                nats.up();
                kills[1] += 1;
            }
            9 => {
                let _ = kill(consumer); // mid-batch, or between commit and ack
                consumer = start_consumer(&t, &nats, &db, "7");
                kills[2] += 1;
            }
            _ if x < 0.5 => swap(&net, &mut rng),
            _ if x < 0.85 => {
                reorg(&net, rng.gen_range(1..=5), &mut rng);
                reorgs += 1;
            }
            _ => mine(&net, 1),
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
    }
    // One reorg deeper than the watermark: blocks already in the cold tier are orphaned.
    wait_for("the API", || is_ready(&api));
    reorg(&net, 9, &mut rng);
    mine(&net, 3);
    assert!(reorgs > 8, "reorgs {reorgs}");
    wait_settled(&net, &api, &[&db]);
    assert_consumer_equals_contracts(&net, &[&db]);
    let orphans = assert_applied_log_is_exactly_once(&net, &db);
    assert!(
        orphans > 5,
        "only {orphans} orphaned (pool, block) updates: the reorgs did not reach the consumer"
    );
    let (_, stderr) = stop(run);
    logs.push_str(&stderr);
    let _ = kill(consumer);
    assert!(!logs.contains("panicked"), "{logs}");
    eprintln!(
        "kills {kills:?}, reorgs {reorgs}, orphaned updates {orphans}, resyncs {}, reverts of blocks published before a restart {}",
        logs.matches("publishing a resync").count(),
        logs.matches("published before a restart").count()
    );
}

#[test]
fn a_broker_outage_never_stalls_the_tail_and_loses_nothing() {
    let net = Devnet::small();
    let mut nats = Nats::start();
    let t = TestCommand::new();
    let db = t.path("consumer.db");
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    // A short stream history: an outage longer than it is caught up by a resync.
    let run = start_run_with(&t, &net, &nats, port, "4", &["--stream-history", "64"]);
    // Two consumers share the pools (partitions 0/2 and 1/2), each into its own database.
    let db1 = t.path("consumer1.db");
    let mport = free_port();
    let consumer = start_consumer_with(
        &t,
        &nats,
        &db,
        "64",
        &["--partition", "0/2", "--metrics-listen", &format!("127.0.0.1:{mport}")],
    );
    let consumer1 = start_consumer_with(&t, &nats, &db1, "64", &["--partition", "1/2"]);
    warm_up(&net, &mut rng);
    wait_settled(&net, &api, &[&db, &db1]);
    nats.down();
    let mut max_backlog: f64 = 0.0;
    let mut slowest = Duration::ZERO;
    for _ in 0..15 {
        swap(&net, &mut rng);
        let head = net.head() as f64;
        // The tail and the API go on: the state reaches the new head while the broker is away.
        wait_for_within("the state follows the head", Duration::from_secs(10), || {
            metric(&api, "tidewater_state_head_block") == Some(head)
        });
        let start = Instant::now();
        let (code, _) = get_json(&format!("{api}/v1/pools"));
        slowest = slowest.max(start.elapsed());
        assert_eq!(code, 200);
        max_backlog = max_backlog.max(metric(&api, "tidewater_publish_backlog").unwrap_or(0.0));
    }
    assert!(
        max_backlog >= 10.0,
        "the backlog did not rise while the broker was away: {max_backlog}"
    );
    // Past the live history (and the stream channel's 1,024 events): 700 more blocks.
    rpc(&net.url, "anvil_mine", json!(["0x2bc"]));
    let head = net.head() as f64;
    wait_for_within("the state follows the head", Duration::from_secs(60), || {
        metric(&api, "tidewater_state_head_block") == Some(head)
    });
    let backlog = metric(&api, "tidewater_publish_backlog").unwrap_or(0.0);
    assert!(backlog > 1024.0, "backlog {backlog}");
    let resyncs = metric(&api, "tidewater_publish_resyncs_total").unwrap();
    assert_eq!(metric(&api, "tidewater_publish_connected"), Some(0.0));
    nats.up();
    wait_settled(&net, &api, &[&db, &db1]);
    assert!(
        metric(&api, "tidewater_publish_resyncs_total").unwrap() > resyncs,
        "the publisher did not resync after falling past the live history"
    );
    assert_consumer_equals_contracts(&net, &[&db, &db1]);
    for d in [&db, &db1] {
        assert_applied_log_is_exactly_once(&net, d);
        assert!(!consumer_state(d).0.is_empty(), "a partition got no pool");
    }
    assert_alerts_name_served_metrics(&api);
    // The broker's backlog of each consumer, read by the publisher, drains to zero.
    for name in ["tidewater-consume-0-of-2", "tidewater-consume-1-of-2"] {
        wait_for("the consumers' pending counts", || {
            metric_with(&api, "tidewater_broker_consumer_pending", name) == Some(0.0)
        });
    }
    // The consumer's own metrics: the stage from block to commit.
    let capi = format!("http://127.0.0.1:{mport}");
    assert!(metric(&capi, "tidewater_consume_applied_total").unwrap_or(0.0) > 0.0);
    assert!(
        metric(&capi, "tidewater_stage_delay_seconds_count").unwrap_or(0.0) > 0.0,
        "{}\n{:?}",
        String::from_utf8_lossy(&http_get(&format!("{capi}/metrics")).1),
        ask(&db, "SELECT status, count(*), min(block_timestamp) FROM applied GROUP BY status")
    );
    let _ = kill(consumer1);
    eprintln!("head reads during the outage: slowest {slowest:?}; backlog peaked at {max_backlog}");
    stop(run);
    let _ = kill(consumer);
}

#[test]
fn bad_publish_and_consume_input_is_refused() {
    let t = TestCommand::new();
    let out = t.run(&s(&[
        "run",
        "--rpc",
        "http://127.0.0.1:1",
        "--uniswap-v3-factory",
        "0x0000000000000000000000000000000000000001",
        "--publish",
        "http://u:secret@x",
        "--data",
        "d",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected nats://host:port"), "{err}");
    assert!(!err.contains("secret"), "a password was printed: {err}");
    let out = t.run(&s(&["consume", "--into", "postgres://x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite://"));
    // A damaged publisher checkpoint is not guessed around, and nothing is written.
    let net = Devnet::small();
    let data: PathBuf = t.path("d");
    std::fs::create_dir_all(data.join("_publish")).unwrap();
    std::fs::write(data.join("_publish/tidewater.json"), b"{").unwrap();
    let before = snapshot_dir(&data);
    let mut args =
        s(&["run", "--data", "d", "--listen", "127.0.0.1:0", "--publish", "nats://127.0.0.1:1"]);
    args.extend(net.uniswap_flags());
    let out = t.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("publisher's checkpoint"));
    assert_eq!(snapshot_dir(&data), before, "the data directory changed");
    // --publish without the live state.
    let mut args = s(&["run", "--data", "e", "--no-serve", "--publish", "nats://127.0.0.1:1"]);
    args.extend(net.uniswap_flags());
    let out = t.run(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-serve"));
}
