#!/usr/bin/env bash
# The HTTP API under load, on loopback:
#  1. small devnet, `tidewater run --ws` with the API: how long after a block reaches the hot
#     buffer (its `pending` line on --print-updates) its SSE `pending` event reaches a client;
#     and mined -> SSE end to end;
#  2. head-state reads of one pool and of its ticks with wrk: at a paced ~5,000 requests/s
#     (each of 50 connections waits 9 ms between requests) and flat out, requests/s and p99;
#     and paced again while heavy SQL queries run back to back, and while deep reorgs reload
#     the live state (BENCH_BASELINE=<older binary> runs these read phases for it too;
#     BENCH_SQL_NICE=N repeats the heavy-SQL phase with --sql-nice N);
#  3. large devnet (507k logs): past-block state (`/v1/pools/{pool}?block=N` and `/ticks`) at
#     distinct random confirmed blocks: p50/p99 latency (snapshot + fold, no cache).
# BENCH_BIN=<binary> measures a given build (default: this checkout, built in release).
# BENCH_SKIP_LARGE=1 skips 3 (it loads a 5 GB anvil state), BENCH_SKIP_SMALL=1 skips 1 and 2.
# Prints one report.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install.sh
command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null || sudo apt-get install -y -q wrk >/dev/null; }
# BENCH_BIN=<binary> measures that build instead of building this checkout.
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release -q -p tidewater; fi
bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release/tidewater}"
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT

# wrk stands for clients on other machines: where allowed (root), it runs at nice -10 so that
# its own waits for one of these 2 shared cores are not counted as the server's latency
# (BENCH_WRK_NICE=0 leaves it at the default priority).
wrk_nice=()
if [ "${BENCH_WRK_NICE:-1}" = 1 ] && nice -n -10 true 2>/dev/null && [ "$(nice -n -10 nice)" = -10 ]; then
  wrk_nice=(nice -n -10)
fi
echo "[reads] wrk priority: ${wrk_nice[*]:-default}"
bench() { # name url extra-args
  local out; out=$("${wrk_nice[@]}" wrk -t2 -c50 -d"${BENCH_SECONDS:-15}"s --latency "${@:3}" "$2")
  local rps p99 p50
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "[reads] $1: $rps req/s, p50 $p50, p99 $p99"
}
echo 'function delay() return 9 end' > "$work/pace.lua"
api_port=$(free_port)
if [ "${BENCH_SKIP_SMALL:-0}" != 1 ]; then
small="$(scripts/devnet.sh build small)"
port=$(free_port)
scripts/devnet.sh start small "$port" &
pids+=($!)
wait_rpc "http://127.0.0.1:$port"
python3 - "$bin" "http://127.0.0.1:$port" "$small/deploy.json" "$work/small" "$api_port" "${BENCH_BLOCKS:-200}" <<'PY'
import json, subprocess, sys, threading, time, urllib.request, http.client
binary, url, deploy, work, api_port, n_blocks = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
sys.path.insert(0, "scripts")
import benchlib
rpc = lambda method, params: benchlib.rpc(url, method, params)
p = subprocess.Popen([binary, "run", "--rpc", url, "--data", f"{work}/data", "--confirmations", "20",
    "--ws", url.replace("http://", "ws://"), "--poll-interval-ms", "60000", "--print-updates",
    "--listen", f"127.0.0.1:{api_port}", "--uniswap-v3-factory", deploy["factory"],
    "--uniswap-v3-position-manager", deploy["position_manager"]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
hot, sse = {}, {}
def bus_reader():
    for line in p.stdout:
        u = json.loads(line)
        if u["status"] == "pending":
            hot[u["block_hash"]] = time.perf_counter()
threading.Thread(target=bus_reader, daemon=True).start()
for _ in range(200):
    try:
        c = http.client.HTTPConnection("127.0.0.1", api_port); c.request("GET", "/ready")
        if c.getresponse().status == 200: break
    except OSError: pass
    time.sleep(0.1)
def sse_reader():
    c = http.client.HTTPConnection("127.0.0.1", api_port)
    c.request("GET", "/v1/stream", headers={"Accept": "text/event-stream"})
    r = c.getresponse()
    event = None
    while True:
        line = r.fp.readline()
        if not line: return
        line = line.decode().rstrip("\n")
        if line.startswith("event:"): event = line[6:].strip()
        elif line.startswith("data:") and event == "pending":
            sse[json.loads(line[5:])["block"]["hash"]] = time.perf_counter()
threading.Thread(target=sse_reader, daemon=True).start()
time.sleep(1)
wait_for = benchlib.wait_for
e2e, delta = [], []
for i in range(n_blocks):
    rpc("evm_mine", [])
    t0 = time.perf_counter()
    h = rpc("eth_getBlockByNumber", ["latest", False])["hash"]
    t_sse = wait_for(sse, h)
    t_hot = wait_for(hot, h)
    e2e.append((t_sse - t0) * 1000)
    delta.append((t_sse - t_hot) * 1000)
metrics = urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics").read().decode()
p.terminate(); p.wait()
q = lambda xs, x: sorted(xs)[min(len(xs) - 1, int(x * len(xs)))]
print(f"[stream] {n_blocks} blocks over --ws")
print(f"[stream] hot buffer -> SSE client (print-updates line vs SSE event, same reader process): p50 {q(delta, .5):.2f} ms, p99 {q(delta, .99):.2f} ms, max {max(delta):.2f} ms")
print(f"[stream] mined -> SSE client: p50 {q(e2e, .5):.2f} ms, p99 {q(e2e, .99):.2f} ms")
for l in metrics.splitlines():
    if l.startswith("tidewater_stream_delay_seconds_bucket") and ('le="0.001"' in l or 'le="0.005"' in l or 'le="0.01"' in l or '+Inf' in l):
        print(f"[stream] metric {l}")
PY

# Head reads under wrk, against `tidewater serve` on the small dataset just written; then
# against `tidewater run` while deep reorgs (deeper than the watermark: the cold tier rolls
# back and the live state reloads from it) come one after another. With BENCH_BASELINE=<binary>
# (an older build) every read phase runs for it too, side by side in this one run.
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()
heavy='{"sql": "SELECT count(*) AS n, sum(a % 7) AS s FROM generate_series(1, 30000000) t(a)"}'
read_phases() { # binary label
  local b=$1 l=$2 sp
  "$b" serve --data "$work/small/data" --listen "127.0.0.1:$api_port" >/dev/null 2>&1 &
  sp=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api_port/ready" >/dev/null && break; sleep 0.1; done
  pool=$(curl -s "http://127.0.0.1:$api_port/v1/pools" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(d["pools"], key=lambda p: p["initialized_ticks"])["address"])')
  ticks=$(curl -s "http://127.0.0.1:$api_port/v1/pools/$pool/ticks" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ticks"]))')
  bench "$l: pool, paced" "http://127.0.0.1:$api_port/v1/pools/$pool" -s "$work/pace.lua"
  bench "$l: ticks ($ticks initialized), paced" "http://127.0.0.1:$api_port/v1/pools/$pool/ticks" -s "$work/pace.lua"
  bench "$l: pool, flat out" "http://127.0.0.1:$api_port/v1/pools/$pool"
  bench "$l: ticks, flat out" "http://127.0.0.1:$api_port/v1/pools/$pool/ticks"
  # Paced head reads while heavy SQL queries (each a few seconds of CPU) run back to back.
  ( n=0; end=$((SECONDS + ${BENCH_SECONDS:-15})); while [ $SECONDS -lt $end ]; do
      curl -s -o /dev/null -X POST -H 'content-type: application/json' -d "$heavy" \
        "http://127.0.0.1:$api_port/v1/sql"; n=$((n + 1))
    done; echo "[reads] $l: heavy SQL queries run meanwhile: $n" ) &
  local sql_loop=$!
  bench "$l: pool, paced, while heavy SQL runs" "http://127.0.0.1:$api_port/v1/pools/$pool" -s "$work/pace.lua"
  wait $sql_loop
  kill $sp; wait $sp 2>/dev/null || true
  # The same with the SQL threads at a lower priority (--sql-nice), where the binary has it.
  if [ -n "${BENCH_SQL_NICE:-}" ] && "$b" serve --help | grep -q -- --sql-nice; then
    "$b" serve --data "$work/small/data" --listen "127.0.0.1:$api_port" --sql-nice "$BENCH_SQL_NICE" >/dev/null 2>&1 &
    sp=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$api_port/ready" >/dev/null && break; sleep 0.1; done
    ( n=0; end=$((SECONDS + ${BENCH_SECONDS:-15})); while [ $SECONDS -lt $end ]; do
        curl -s -o /dev/null -X POST -H 'content-type: application/json' -d "$heavy" \
          "http://127.0.0.1:$api_port/v1/sql"; n=$((n + 1))
      done; echo "[reads] $l --sql-nice $BENCH_SQL_NICE: heavy SQL queries run meanwhile: $n" ) &
    sql_loop=$!
    bench "$l --sql-nice $BENCH_SQL_NICE: pool, paced, while heavy SQL runs" "http://127.0.0.1:$api_port/v1/pools/$pool" -s "$work/pace.lua"
    wait $sql_loop
    kill $sp; wait $sp 2>/dev/null || true
  fi
  # Paced head reads while deep reorgs reload the state, on a fresh anvil and data directory.
  local port; port=$(free_port)
  scripts/devnet.sh start small "$port" >/dev/null 2>&1 &
  local ap=$!
  wait_rpc "http://127.0.0.1:$port"
  rm -rf "$work/reorg"
  "$b" run --rpc "http://127.0.0.1:$port" --ws "ws://127.0.0.1:$port" --data "$work/reorg" \
    --confirmations 2 --compact-blocks 1 --listen "127.0.0.1:$api_port" \
    --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" >/dev/null 2>"$work/reorg.log" &
  local rp=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$api_port/ready" >/dev/null && break; sleep 0.1; done
  python3 - "http://127.0.0.1:$port" "$work/reorgs.stop" <<'PY' &
import os, sys, time
sys.path.insert(0, "scripts")
import benchlib
url, stop = sys.argv[1], sys.argv[2]
n = 0
while not os.path.exists(stop):
    for _ in range(6):
        benchlib.rpc(url, "evm_mine", [])
    time.sleep(0.3)
    # 3 of the 5 replaced blocks are already cold; a transfer makes the new branch differ.
    tx = {"from": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "to": "0x000000000000000000000000000000000000dEaD", "value": hex(n + 1)}
    benchlib.rpc(url, "anvil_reorg", [5, [[tx, 0]]])
    n += 1
    time.sleep(0.2)
print(f"[reads] deep reorgs driven: {n}")
PY
  local driver=$!
  sleep 1
  bench "$l: pool, paced, while deep reorgs reload the state" "http://127.0.0.1:$api_port/v1/pools/$pool" -s "$work/pace.lua"
  touch "$work/reorgs.stop"; wait $driver; rm -f "$work/reorgs.stop"
  echo "[reads] $l: $(curl -s "http://127.0.0.1:$api_port/metrics" | grep -E '^tidewater_(deep_reorgs_total|reorgs_total) ' | tr '\n' ' ')"
  echo "[reads] $l: state reloads logged: $(grep -c 'reloaded from the cold tier' "$work/reorg.log" || true)"
  kill $rp $ap; wait $rp $ap 2>/dev/null || true
}
read -r factory npm < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["factory"], d["position_manager"])' "$small/deploy.json")
if [ -n "${BENCH_BASELINE:-}" ]; then read_phases "$BENCH_BASELINE" baseline; fi
read_phases "$bin" this
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()
fi

[ "${BENCH_SKIP_LARGE:-0}" = 1 ] && exit 0
large="$(scripts/devnet.sh build large)"
port=$(free_port)
scripts/devnet.sh start large "$port" &
pids+=($!)
wait_rpc "http://127.0.0.1:$port"
read -r factory npm < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["factory"], d["position_manager"])' "$large/deploy.json")
"$bin" backfill --rpc "http://127.0.0.1:$port" --data "$work/large" --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" >/dev/null 2>&1
t0=$(date +%s.%N)
"$bin" serve --data "$work/large" --listen "127.0.0.1:$api_port" >/dev/null 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$api_port/ready" >/dev/null; do sleep 0.05; done
t1=$(date +%s.%N)
logs=$("$bin" sql --data "$work/large" --format csv "SELECT count(*) FROM logs" | tail -1)
snaps=$(ls "$work/large/_snapshots" | grep -c json)
echo "[past] serve start on $logs logs (fold + $snaps snapshots written): $(python3 -c "print(f'{$t1-$t0:.2f}')") s"
pool=$(curl -s "http://127.0.0.1:$api_port/v1/pools" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(d["pools"], key=lambda p: p["initialized_ticks"])["address"])')
ticks=$(curl -s "http://127.0.0.1:$api_port/v1/pools/$pool/ticks" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ticks"]))')
bench "large chain: pool, paced" "http://127.0.0.1:$api_port/v1/pools/$pool" -s "$work/pace.lua"
bench "large chain: ticks ($ticks initialized), paced" "http://127.0.0.1:$api_port/v1/pools/$pool/ticks" -s "$work/pace.lua"
python3 - "$api_port" <<'PY'
import json, random, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
get = lambda p: json.load(urllib.request.urlopen(base + p))
pools = get("/v1/pools")
head = pools["block"]["number"]
pool = max(pools["pools"], key=lambda p: p["initialized_ticks"])["address"]
random.seed(7)
blocks = random.sample(range(head // 2, head), 60)
lat = {"pool": [], "ticks": []}
for b in blocks:
    for kind, path in (("pool", f"/v1/pools/{pool}?block={b}"), ("ticks", f"/v1/pools/{pool}/ticks?block={b}")):
        t0 = time.perf_counter()
        try:
            urllib.request.urlopen(base + path).read()
        except urllib.error.HTTPError as e:
            if e.code != 404: raise
        lat[kind].append((time.perf_counter() - t0) * 1000)
for kind, xs in lat.items():
    xs.sort()
    print(f"[past] {kind} at {len(xs)} distinct random confirmed blocks: p50 {xs[len(xs)//2]:.1f} ms, p99 {xs[min(len(xs)-1, int(.99*len(xs)))]:.1f} ms, max {xs[-1]:.1f} ms")
PY
