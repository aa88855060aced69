#!/usr/bin/env bash
# Publishing to NATS JetStream on the small devnet, measured side by side in one run:
#  - block mined (evm_mine returns) -> its pool updates committed by the reference consumer
#    (tidewater consume, SQLite), p50/p99 over BENCH_BLOCKS blocks of BENCH_SWAPS swaps each;
#  - head-read latency (GET /v1/pools/{pool}) during that traffic, with and without --publish;
#  - updates/s and messages/s the publisher sustains: BENCH_BURST blocks are mined while the
#    broker is down, then it comes back; and the time from its restart to an empty backlog.
# Prints one table. Needs nothing but scripts/install.sh (nats-server from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BENCH_ON_EXIT='pkill -f "nats-server.*$work" 2>/dev/null || true'
bench_small_devnet
python3 - "$CARGO_TARGET_DIR/release/tidewater" "http://127.0.0.1:$port" "$chain/deploy.json" "$work" \
  "${BENCH_BLOCKS:-150}" "${BENCH_SWAPS:-4}" "${BENCH_BURST:-400}" "$TIDEWATER_NATS_SERVER" <<'PY'
import json, random, socket, sqlite3, statistics, subprocess, sys, threading, time, urllib.request
binary, url, deploy, work, n_blocks, n_swaps, burst, nats_bin = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
sys.path.insert(0, "scripts")
import benchlib
rpc = lambda method, params: benchlib.rpc(url, method, params)
ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
rng = random.Random(5)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def word(v): return format(v, "064x")
def addr(a): return word(int(a, 16))
def swap_tx():
    p = rng.choice(deploy["pools"])
    tin, tout = (p["token0"], p["token1"]) if rng.random() < 0.5 else (p["token1"], p["token0"])
    data = "0x414bf389" + addr(tin) + addr(tout) + word(p["fee"]) + addr(ACCOUNT) + word(1 << 40) \
        + word(rng.randrange(1, 1_000_000) * 10**12) + word(0) + word(0)
    return {"from": ACCOUNT, "to": deploy["swap_router"], "data": data, "gas": "0x7a1200"}

def mine_block(k):
    for _ in range(k):
        rpc("eth_sendTransaction", [swap_tx()])
    rpc("evm_mine", [])
    return rpc("eth_getBlockByNumber", ["latest", False])["hash"]

def metric(api, name):
    try:
        text = urllib.request.urlopen(f"{api}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    for l in text.splitlines():
        if l.split(" ")[0].split("{")[0] == name:
            return float(l.rsplit(" ", 1)[1])
    return None

def wait(what, f, limit=120):
    t = time.time()
    while True:
        try:
            if f(): break
        except Exception:
            pass
        if time.time() - t > limit: raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.01)

nats_port = free_port()
nats_url = f"nats://127.0.0.1:{nats_port}"
def nats_up():
    return subprocess.Popen([nats_bin, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", f"{work}/nats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
nats = nats_up()
rpc("evm_setAutomine", [False])
results = {}
for mode in ("without", "with"):
    api_port = free_port(); api = f"http://127.0.0.1:{api_port}"
    args = [binary, "run", "--rpc", url, "--data", f"{work}/data-{mode}", "--confirmations", "20",
            "--poll-interval-ms", "20", "--listen", f"127.0.0.1:{api_port}",
            "--uniswap-v3-factory", deploy["factory"], "--uniswap-v3-position-manager", deploy["position_manager"]]
    if mode == "with":
        args += ["--publish", nats_url]
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = f"{work}/consumer-{mode}.db"
    consumer = None
    if mode == "with":
        consumer = subprocess.Popen([binary, "consume", "--nats", nats_url, "--batch", "256", "--into", f"sqlite://{db}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait("caught up", lambda: metric(api, "tidewater_ready") == 1.0)
    # Head reads in the background while blocks come.
    reads, stop = [], threading.Event()
    pool = deploy["pools"][0]["address"]
    def reader():
        while not stop.is_set():
            t0 = time.perf_counter()
            urllib.request.urlopen(f"{api}/v1/pools/{pool}", timeout=5).read()
            reads.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.005)
    th = threading.Thread(target=reader, daemon=True); th.start()
    lat = []
    conn = None
    for i in range(n_blocks):
        h = mine_block(n_swaps)
        t0 = time.perf_counter()
        if mode == "with":
            if conn is None:
                wait("consumer db", lambda: __import__("os").path.exists(db))
                conn = sqlite3.connect(db, timeout=5)
            def applied():
                try:
                    return conn.execute("SELECT 1 FROM applied WHERE block_hash = ? LIMIT 1", (h,)).fetchone() is not None
                except sqlite3.OperationalError:
                    return False
            wait("the consumer", applied, 30)
            lat.append((time.perf_counter() - t0) * 1000)
        else:
            wait("the state", lambda: metric(api, "tidewater_state_head_block") == float(int(rpc("eth_blockNumber", []), 16)), 30)
    stop.set(); th.join()
    reads.sort()
    q = lambda xs, x: xs[min(len(xs) - 1, int(x * len(xs)))]
    results[mode] = {"reads_p50": q(reads, 0.5), "reads_p99": q(reads, 0.99), "reads": len(reads)}
    if mode == "with":
        lat.sort()
        results["e2e"] = (q(lat, 0.5), q(lat, 0.99))
        # Throughput: a backlog built while the broker is down, drained when it returns.
        nats.kill(); nats.wait()
        for _ in range(burst):
            mine_block(n_swaps)
        head = float(int(rpc("eth_blockNumber", []), 16))
        wait("the state", lambda: metric(api, "tidewater_state_head_block") == head, 120)
        backlog = metric(api, "tidewater_publish_backlog")
        u0, m0 = metric(api, "tidewater_publish_updates_total"), metric(api, "tidewater_publish_messages_total")
        nats = nats_up()
        t0 = time.perf_counter()
        # The first acknowledgement after the restart (the publisher's backoff is up to 5 s)...
        wait("the first ack", lambda: metric(api, "tidewater_publish_updates_total") > u0, 60)
        t1 = time.perf_counter()
        u1, m1 = metric(api, "tidewater_publish_updates_total"), metric(api, "tidewater_publish_messages_total")
        # ...then the drain at full speed.
        wait("an empty backlog", lambda: metric(api, "tidewater_publish_backlog") == 0.0, 300)
        t2 = time.perf_counter()
        u2, m2 = metric(api, "tidewater_publish_updates_total"), metric(api, "tidewater_publish_messages_total")
        results["drain"] = (backlog, t1 - t0, t2 - t0, (u2 - u1) / (t2 - t1), (m2 - m1) / (t2 - t1))
    run.terminate(); run.wait()
    if consumer: consumer.terminate(); consumer.wait()
nats.kill()
w, wo = results["with"], results["without"]
print(f"small devnet, {n_blocks} blocks of {n_swaps} swaps (automine off), poll 20 ms")
print(f"mined -> consumer commit (SQLite): p50 {results['e2e'][0]:.1f} ms, p99 {results['e2e'][1]:.1f} ms")
print(f"GET /v1/pools/{{pool}} during the traffic: without --publish p50 {wo['reads_p50']:.2f} / p99 {wo['reads_p99']:.2f} ms "
      f"({wo['reads']} reads); with p50 {w['reads_p50']:.2f} / p99 {w['reads_p99']:.2f} ms ({w['reads']} reads); "
      f"p99 ratio with/without {w['reads_p99'] / wo['reads_p99']:.2f}")
b, first, empty, ups, mps = results["drain"]
print(f"broker down for {burst} blocks ({b:.0f} updates of backlog), restarted: first ack {first:.2f} s after the restart "
      f"(publisher backoff), backlog empty after {empty:.2f} s; drained at {ups:.0f} updates/s, {mps:.0f} messages/s")
PY
