//! The liquidity page in a real browser: headless Chromium from Debian, driven over WebDriver
//! (`chromedriver`), against a live `run` on the devnet. What the page shows equals the API and
//! the contracts; a reorg shows as reverted; time travel shows the chosen block; screenshots of
//! each view go to `target/screenshots/`.

use crate::tail::{reorg, swap, warm_up};
use crate::util::*;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A WebDriver session on a headless Chromium.
struct Browser {
    driver: String,
    session: String,
    _chromedriver: Running,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (installed by scripts/install.sh)");
        let driver = format!("http://127.0.0.1:{port}");
        let chromedriver = Running(Some(child));
        let start = Instant::now();
        while http("GET", &format!("{driver}/status"), &[], b"").is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let v = call(&format!("{driver}/session"), "POST", &caps);
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
        Self { driver, session, _chromedriver: chromedriver }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.driver, self.session)
    }

    fn go(&self, url: &str) {
        call(&self.url("/url"), "POST", &json!({"url": url}));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn js(&self, script: &str) -> Value {
        call(&self.url("/execute/sync"), "POST", &json!({"script": script, "args": []}))["value"]
            .clone()
    }

    /// Waits until `script` returns something truthy; returns it.
    fn wait(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == json!([]) || v == "") {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_size(&self, w: u32, h: u32) {
        call(&self.url("/window/rect"), "POST", &json!({"width": w, "height": h}));
    }

    fn screenshot(&self, name: &str) {
        let v = call(&self.url("/screenshot"), "GET", &Value::Null);
        let png = base64_decode(v["value"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http("DELETE", &format!("{}/session/{}", self.driver, self.session), &[], b"");
    }
}

fn call(url: &str, method: &str, body: &Value) -> Value {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (status, out) = http(method, url, &[], &bytes).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    assert!(status == 200, "WebDriver {method} {url}: {status} {v}");
    v
}

/// `target/screenshots/` of the cargo target directory in use.
fn screenshots_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    target.join("screenshots")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk
            .iter()
            .take(4 - pad)
            .enumerate()
            .fold(0u32, |n, (i, c)| n | val(*c) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn slot0_and_liquidity(net: &Devnet, pool: &str, block: &str) -> (String, i64, String) {
    let slot0 = rpc(&net.url, "eth_call", json!([{"to": pool, "data": "0x3850c7bd"}, block]));
    let liq = rpc(&net.url, "eth_call", json!([{"to": pool, "data": "0x1a686502"}, block]));
    let word = |v: &Value, i: usize| v.as_str().unwrap()[2 + 64 * i..2 + 64 * (i + 1)].to_string();
    let sqrt = alloy_primitives::U256::from_str_radix(&word(&slot0, 0), 16).unwrap().to_string();
    let tick = i64::from_str_radix(&word(&slot0, 1)[58..], 16).unwrap();
    let tick = if tick >= 1 << 23 { tick - (1 << 24) } else { tick };
    let liquidity = alloy_primitives::U256::from_str_radix(&word(&liq, 0), 16).unwrap().to_string();
    (sqrt, tick, liquidity)
}

/// The page's sqrtPriceX96, tick and liquidity (`shown`) are the pool contract's at `block`;
/// returns the tick.
fn assert_shows_the_contracts(net: &Devnet, pool: &str, block: u64, shown: &Value) -> i64 {
    let (sqrt, tick, liq) = slot0_and_liquidity(net, pool, &format!("{block:#x}"));
    let page = (
        shown["sqrt"].as_str().unwrap(),
        shown["tick"].as_i64().unwrap(),
        shown["liquidity"].as_str().unwrap(),
    );
    assert_eq!(page, (sqrt.as_str(), tick, liq.as_str()), "the page at block {block}");
    tick
}

#[test]
fn issue_13_the_page_shows_what_the_api_and_the_contracts_say() {
    let net = Devnet::small();
    let t = TestCommand::new();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let mut args = s(&[
        "run",
        "--data",
        "data",
        "--confirmations",
        "3",
        "--compact-interval-secs",
        "0",
        "--poll-interval-ms",
        "50",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    args.extend(net.uniswap_flags());
    let _run = Running(Some(
        t.cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    ));
    wait_for("run to become ready", || is_ready(&api));
    let mut rng = rand::rngs::StdRng::seed_from_u64(crate::proxy::seed());
    warm_up(&net, &mut rng);
    let b = Browser::start();

    // The pool list: every pool, with the API's tick and liquidity, which are the contracts'.
    b.go(&format!("{api}/"));
    let (_, pools) = get_json(&format!("{api}/v1/pools"));
    let n = pools["pools"].as_array().unwrap().len();
    let rows = b.wait(
        "every pool",
        &format!(
            "const r = [...document.querySelectorAll('#pools tbody tr')]; return r.length === {n} ? r.map(x => [x.dataset.pool, Number(x.dataset.tick), x.dataset.liquidity, x.dataset.sqrt, x.children[1].textContent]) : null;"
        ),
    );
    let (_, pools) = get_json(&format!("{api}/v1/pools"));
    let head = format!("{:#x}", pools["block"]["number"].as_u64().unwrap());
    for row in rows.as_array().unwrap() {
        let addr = row[0].as_str().unwrap();
        let p = pools["pools"].as_array().unwrap().iter().find(|p| p["address"] == addr).unwrap();
        assert_eq!(
            (row[1].as_i64().unwrap(), &row[2]),
            (p["tick"].as_i64().unwrap(), &p["liquidity"])
        );
        let (sqrt, tick, liq) = slot0_and_liquidity(&net, addr, &head);
        assert_eq!(
            (row[3].as_str().unwrap(), row[1].as_i64().unwrap(), row[2].as_str().unwrap()),
            (sqrt.as_str(), tick, liq.as_str())
        );
        // Symbols from the tokens' own symbol() (WETH9 and the test ERC-20s).
        assert!(!row[4].as_str().unwrap().contains('…'), "no symbol for {row}");
    }
    b.screenshot("pools.png");

    // The pool view of the busiest pool: bars = the API's intervals; positions = the API's.
    let pool = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|p| p["initialized_ticks"].as_u64().unwrap_or(0))
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    b.go(&format!("{api}/#/pool/{pool}"));
    b.js("document.querySelector('#zoom') && (document.querySelector('#zoom').value = '0'); return true;");
    let view = |b: &Browser| -> Value {
        b.wait(
            "the pool view",
            "const bars = [...document.querySelectorAll('#chart rect.bar')]; const v = document.querySelector('#v-tick'); if (!bars.length || !v) return null; return {block: Number(document.querySelector('#v-block').dataset.value), tick: Number(v.dataset.value), liquidity: document.querySelector('#v-liquidity').dataset.value, sqrt: document.querySelector('#v-sqrt').dataset.value, now: document.querySelector('#now') && Number(document.querySelector('#now').dataset.tick), bars: bars.map(r => [Number(r.dataset.lower), Number(r.dataset.upper), r.dataset.liquidity]), positions: [...document.querySelectorAll('#positions tbody tr')].map(r => [r.dataset.token, r.dataset.liquidity, r.lastElementChild.textContent])};",
        )
    };
    // The pool view renders after its fetches: wait for its zoom control before using it.
    b.wait("the zoom control", "return document.querySelector('#zoom') ? true : null;");
    b.js("document.querySelector('#zoom').value = '0'; document.querySelector('#zoom').onchange(); return true;");
    std::thread::sleep(Duration::from_millis(300));
    let shown = view(&b);
    let at = shown["block"].as_u64().unwrap();
    let (_, ticks) = get_json(&format!("{api}/v1/pools/{pool}/ticks?block={at}"));
    let api_bars: Vec<Value> = ticks["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| json!([i["tick_lower"], i["tick_upper"], i["liquidity"]]))
        .collect();
    assert_eq!(
        shown["bars"].as_array().unwrap(),
        &api_bars,
        "the chart's bars are not the API's intervals"
    );
    assert_eq!(shown["tick"], ticks["tick"]);
    assert_eq!(shown["now"], ticks["tick"], "the current tick is not marked");
    let tick = assert_shows_the_contracts(&net, &pool, at, &shown);
    let (_, pos) = get_json(&format!("{api}/v1/positions?pool={pool}&block={at}"));
    let api_pos: Vec<Value> = pos["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let in_range =
                p["tick_lower"].as_i64() <= Some(tick) && Some(tick) < p["tick_upper"].as_i64();
            json!([p["token_id"], p["liquidity"], if in_range { "yes" } else { "no" }])
        })
        .collect();
    assert_eq!(shown["positions"].as_array().unwrap(), &api_pos);
    b.screenshot("pool.png");

    // Live: new blocks appear pending, then confirmed; a reorg shows the orphaned ones reverted.
    swap(&net, &mut rng);
    let mined = net.head();
    b.wait(
        "a new block, pending or confirmed",
        &format!("return document.querySelector('#blocks tr[data-number=\"{mined}\"]') !== null"),
    );
    let orphan_hash = rpc(&net.url, "eth_getBlockByNumber", json!([format!("{mined:#x}"), false]))
        ["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let before = Instant::now();
    reorg(&net, 1, &mut rng);
    let reverted_after = {
        b.wait(
            "the orphaned block reverted",
            &format!("const r = document.querySelector('#blocks tr[data-hash=\"{orphan_hash}\"]'); return r && r.dataset.status === 'reverted';"),
        );
        before.elapsed()
    };
    eprintln!("the page showed the reorg {reverted_after:?} after anvil_reorg returned");
    for _ in 0..4 {
        swap(&net, &mut rng);
    }
    b.wait(
        "a confirmed block",
        "return [...document.querySelectorAll('#blocks tr')].some(r => r.dataset.status === 'confirmed');",
    );
    // After the reorg the view still equals the contracts at its block.
    std::thread::sleep(Duration::from_millis(500));
    let shown = view(&b);
    let at = shown["block"].as_u64().unwrap();
    assert_shows_the_contracts(&net, &pool, at, &shown);
    b.screenshot("pool-live.png");

    // Time travel: an older block shows that block's state.
    let past = at - 8;
    b.go(&format!("{api}/#/pool/{pool}?block={past}"));
    let shown = b.wait(
        "the past block",
        &format!("const v = document.querySelector('#v-block'); return v && Number(v.dataset.value) === {past} ? {{tick: Number(document.querySelector('#v-tick').dataset.value), liquidity: document.querySelector('#v-liquidity').dataset.value, sqrt: document.querySelector('#v-sqrt').dataset.value}} : null;"),
    );
    assert_shows_the_contracts(&net, &pool, past, &shown);
    b.screenshot("pool-time-travel.png");

    // Operations: the numbers of /metrics.
    b.go(&format!("{api}/#/ops"));
    let shown = b.wait(
        "the operations view",
        "const h = document.querySelector('#o-head'); return h && h.textContent !== '–' ? {head: Number(h.textContent), checkpoint: Number(document.querySelector('#o-checkpoint').textContent), reorgs: document.querySelector('#o-reorgs').textContent, ready: document.querySelector('#o-ready').textContent} : null;",
    );
    let node_head = net.head();
    assert!(shown["head"].as_u64().unwrap() + 2 >= node_head, "{shown}");
    assert!(shown["checkpoint"].as_u64().unwrap() + 10 >= node_head, "{shown}");
    assert!(
        shown["reorgs"].as_str().unwrap().starts_with(|c: char| c.is_ascii_digit() && c != '0'),
        "{shown}"
    );
    assert!(shown["ready"].as_str().unwrap().starts_with("yes"), "{shown}");
    b.screenshot("ops.png");

    // First paint of a pool view on a fresh load (reported, not asserted: machines are noisy).
    b.go("about:blank");
    b.go(&format!("{api}/#/pool/{pool}"));
    let ms = b.wait("the chart on a fresh load", "return window.tidewaterFirstChart || null;");
    eprintln!("pool view: chart drawn {ms} ms after navigation start");

    // A phone-sized screen: the pool view still renders, nothing wider than the screen.
    b.set_size(390, 844);
    b.go(&format!("{api}/#/pool/{pool}"));
    view(&b);
    let overflow = b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(overflow, true, "the page is wider than a phone screen");
    b.screenshot("pool-phone.png");
}
