//! The alert rules of `ops/prometheus/alerts.yml`, fired for real: Prometheus and Alertmanager
//! from Debian scrape a live `tidewater run`, the provider starts failing, and the lag and
//! provider alerts reach a webhook this test listens on, with their labels and runbook; once the
//! provider is back they resolve. The test's copy of the rules shortens every `for:` to 3s and
//! every rate window to 5s (the expressions are otherwise the file's), and Prometheus evaluates
//! every second, so the whole cycle takes seconds instead of minutes.

use crate::proxy::Proxy;
use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Notifications Alertmanager posted to the webhook.
type Inbox = Arc<Mutex<Vec<Value>>>;

fn webhook() -> (String, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let inbox: Inbox = Arc::default();
    let sink = inbox.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let Ok((_, headers)) = read_head(&mut r) else { continue };
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap_or(0));
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let mut w = conn;
            let _ =
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, inbox)
}

/// The rules with short windows for a test (see the module docs).
fn test_rules() -> String {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus/alerts.yml"),
    )
    .unwrap();
    let for_re = |line: &str| -> String {
        match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 3s", &line[..line.len() - line.trim_start().len()]),
            None => line.replace("[1m]", "[5s]").replace("[5m]", "[5s]").replace("[15m]", "[30s]"),
        }
    };
    rules.lines().map(for_re).collect::<Vec<_>>().join("\n")
}

/// (alertname, status) pairs seen by the webhook, with each alert's labels and annotations.
fn notified(inbox: &Inbox, name: &str, status: &str) -> Option<Value> {
    inbox
        .lock()
        .unwrap()
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["labels"]["alertname"] == name && a["status"] == status)
}

#[test]
fn issue_13_lag_and_provider_alerts_fire_reach_the_webhook_and_resolve() {
    let net = Devnet::small();
    let proxy = Proxy::start_with(net.url.clone(), 1_000_000, false);
    let t = TestCommand::new();
    let api_port = free_port();
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--confirmations",
        "3",
        "--poll-interval-ms",
        "100",
        "--rpc-timeout-ms",
        "1000",
        "--listen",
        &format!("127.0.0.1:{api_port}"),
    ]);
    args.extend(net.uniswap_flags_via(&proxy.url));
    let _run = Running(Some(
        t.cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    ));
    // Blocks keep coming, as on a live chain.
    let mining = Arc::new(AtomicBool::new(true));
    let (m, url) = (mining.clone(), net.url.clone());
    let miner = std::thread::spawn(move || {
        while m.load(Ordering::Relaxed) {
            let _ = try_rpc(&url, "evm_mine", json!([]));
            std::thread::sleep(Duration::from_millis(400));
        }
    });

    let (hook, inbox) = webhook();
    let am_port = free_port();
    std::fs::write(
        t.path("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let _am = Running(Some(
        Command::new("prometheus-alertmanager")
            .current_dir(t.dir.path())
            .args([
                "--config.file=alertmanager.yml",
                "--storage.path=am-data",
                &format!("--web.listen-address=127.0.0.1:{am_port}"),
                "--cluster.listen-address=",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (installed by scripts/install.sh)"),
    ));
    std::fs::write(t.path("alerts.yml"), test_rules()).unwrap();
    let prom_port = free_port();
    std::fs::write(
        t.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\nscrape_configs:\n  - job_name: tidewater\n    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n"
        ),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(t.dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let _prom = Running(Some(
        Command::new("prometheus")
            .current_dir(t.dir.path())
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=prom-data",
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by scripts/install.sh)"),
    ));
    let prom = format!("http://127.0.0.1:{prom_port}");
    let query = |q: &str| -> Value {
        let url = format!("{prom}/api/v1/query?query={}", q.replace(' ', "%20"));
        let body = http("GET", &url, &[], b"").map(|r| r.1).unwrap_or_default();
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    // Healthy first: scraped, ready, no alert firing.
    // Generous: on a loaded 2-core machine (other tests beside it) the first scrapes can come
    // while the tail still catches up with a block every 400 ms.
    wait_for_within("Prometheus to scrape a ready Tidewater", Duration::from_secs(150), || {
        query("tidewater_ready")["data"]["result"][0]["value"][1] == "1"
    });
    std::thread::sleep(Duration::from_secs(5));
    let firing = |name: &str| -> bool {
        let body = http("GET", &format!("{prom}/api/v1/alerts"), &[], b"")
            .map(|r| r.1)
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| x["labels"]["alertname"] == name && x["state"] == "firing")
        })
    };
    for name in ["TidewaterHeadLagBlocks", "TidewaterRpcErrorRate", "TidewaterNotReady"] {
        assert!(!firing(name), "{name} fires on a healthy run");
    }
    // Every metric the rules and the dashboard name is one the binary serves (a renamed
    // metric would silence an alert without a word).
    let (_, m) = http_get(&format!("http://127.0.0.1:{api_port}/metrics"));
    let served = String::from_utf8(m).unwrap();
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
    for file in ["prometheus/alerts.yml", "grafana/tidewater.json"] {
        let text = std::fs::read_to_string(ops.join(file)).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tidewater_"))
            .collect();
        assert!(names.len() > 8, "{file}: {names:?}");
        // The publisher's metrics are served with --publish: checked by the broker tests.
        for n in names
            .into_iter()
            .filter(|n| !crate::broker::PUBLISH_METRICS.iter().any(|p| n.starts_with(p)))
        {
            // OpenMetrics names a counter without its `_total` in `# TYPE`.
            let base = n.trim_end_matches("_bucket").trim_end_matches("_total");
            assert!(
                served.lines().any(|l| l.starts_with(&format!("# TYPE {base} "))),
                "{file} uses {n}, which /metrics does not serve"
            );
        }
    }

    // The provider fails everything but the head: the tail falls behind and errors pile up.
    proxy.fail_except_head.store(true, Ordering::Relaxed);
    let limit = Duration::from_secs(150);
    wait_for_within("the lag and provider alerts at the webhook", limit, || {
        notified(&inbox, "TidewaterHeadLagBlocks", "firing").is_some()
            && notified(&inbox, "TidewaterRpcErrorRate", "firing").is_some()
    });
    for name in ["TidewaterHeadLagBlocks", "TidewaterRpcErrorRate"] {
        let a = notified(&inbox, name, "firing").unwrap();
        assert!(!a["labels"]["severity"].as_str().unwrap_or("").is_empty(), "{a}");
        assert!(a["annotations"]["runbook"].as_str().is_some_and(|r| r.len() > 20), "{a}");
        assert!(a["annotations"]["summary"].is_string(), "{a}");
    }
    let rpc_alert = notified(&inbox, "TidewaterRpcErrorRate", "firing").unwrap();
    assert!(rpc_alert["labels"]["provider"].as_str().unwrap().starts_with("http://127.0.0.1:"));

    // The provider is back: the tail catches up and both alerts resolve.
    proxy.fail_except_head.store(false, Ordering::Relaxed);
    wait_for_within("the alerts to resolve", limit, || {
        notified(&inbox, "TidewaterHeadLagBlocks", "resolved").is_some()
            && notified(&inbox, "TidewaterRpcErrorRate", "resolved").is_some()
    });
    mining.store(false, Ordering::Relaxed);
    miner.join().unwrap();
}
