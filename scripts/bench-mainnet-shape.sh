#!/usr/bin/env bash
# Mainnet's shape, measured: the mainnet-shaped devnet behind the provider simulator
# (tidewater-provider-sim, Alchemy's limits, error words and compute-unit table), side by side
# in one run:
#   1. tidewater backfill with default settings: requests, compute units and bytes per method,
#      per 1,000,000 blocks and per 1,000,000 watched logs; CU against its eth_getLogs calls
#      alone (the floor); wall time with no budget and under BENCH_RPS (default 25) requests/s;
#      peak RSS;
#   2. cryo over the same contracts, node, simulator and range (BENCH_CRYO=0 skips it);
#   3. a dataset of one-block chunks over BENCH_CHUNKS blocks (default 20,000, at most the
#      chain): `status`, serve start-up, POST /v1/sql count(*), a past-block pool state, with
#      this build and, when BENCH_BASELINE names an older binary, with it (on a copy it writes
#      itself over the same blocks: an earlier binary may not read this one's manifest).
# BENCH_PRESET=mainnet-shape-mini runs the same on the small mainnet-shaped chain the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
preset="${BENCH_PRESET:-mainnet-shape}"
rps="${BENCH_RPS:-25}"
profile="${BENCH_PROFILE:-alchemy}"

scripts/install.sh >/dev/null
cargo build --release -q -p tidewater -p tidewater-testkit
tw="$CARGO_TARGET_DIR/release/tidewater"
sim_bin="$CARGO_TARGET_DIR/release/tidewater-provider-sim"
chain="$(scripts/devnet.sh build "$preset")"
port=$(free_port)
scripts/devnet.sh start "$preset" "$port" &
anvil=$!
work=$(mktemp -d)
sims=()
cleanup() { kill $anvil "${sims[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
url="http://127.0.0.1:$port"
wait_rpc "$url"
head=$(python3 -c "import sys; sys.path.insert(0, 'scripts'); import benchlib; print(int(benchlib.rpc('$url', 'eth_blockNumber', []), 16))")
read -r factory npm <<<"$(python3 -c "import json;d=json.load(open('$chain/deploy.json'));print(d['factory'], d['position_manager'])")"
echo "chain: $preset, blocks 0..$head, $(python3 -c "import json;print(len(json.load(open('$chain/deploy.json'))['pools']))") pools, profile $profile" >&2

# A fresh simulator per run, so each run's bill stands alone. Sets $sim_url.
start_sim() {
  local out="$work/sim.$1.out"
  "$sim_bin" --upstream "$url" --profile "$profile" ${2:+--rps "$2"} > "$out" &
  sims+=($!)
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
  sim_url=$(head -1 "$out")
}
stats() { curl -s "$sim_url/stats" > "$work/$1.stats.json"; }

# The simulator stands for a hosted provider: tidewater is told to aim at the answers it would
# choose for a remote one (on 127.0.0.1 it would aim at the smaller answers of a local node).
remote="--answer-logs 10000"

# BENCH_ONLY_CHUNKS=1 runs part 3 alone.
if [ "${BENCH_ONLY_CHUNKS:-0}" != 1 ]; then
# 1. tidewater, no budget, then under the budget.
start_sim tw
/usr/bin/time -v -o "$work/tw.time" "$tw" backfill --rpc "$sim_url" --data "$work/tw" --to "$head" --json $remote \
  --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" > "$work/tw.json"
stats tw
start_sim twb "$rps"
/usr/bin/time -v -o "$work/twb.time" "$tw" backfill --rpc "$sim_url" --data "$work/twb" --to "$head" --json $remote \
  --rps "$rps" --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" > "$work/twb.json"
stats twb
start_sim twa
/usr/bin/time -v -o "$work/twa.time" "$tw" backfill --rpc "$sim_url" --data "$work/twa" --to "$head" --json $remote \
  --filter-mode addresses --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" > "$work/twa.json"
stats twa

# 2. cryo through the same simulator: (a) as a user would first run it, with the contract
# list (one request per contract per block: 5,002 contracts make that hundreds of millions of
# requests on the full chain, so over the first BENCH_CRYO_SAMPLE busy blocks only when the
# chain has more than 1,000 contracts, and scaled); (b) tuned like tidewater's default: the pool
# events by selector with no address (kept to the pools afterwards), the factory and the
# position manager by address, over the whole range, in requests of BENCH_CRYO_SPAN blocks
# (default 25: cryo does not split a request the provider refuses, and 1,000-block requests
# over the busy blocks, ~300 watched logs each, are all refused for the 10,000-log cap: that
# run returned no pool log at all).
if [ "${BENCH_CRYO:-1}" = 1 ]; then
  # The first busy block: the first swap of the least busy of the busy pools.
  read -r ncontracts first_busy <<<"$(python3 - "$chain/deploy.json" "$url" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
import benchlib
d = json.load(open(sys.argv[1]))
swap = "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67"
logs = benchlib.rpc(sys.argv[2], "eth_getLogs", [{"address": d["hot"][-1], "topics": [swap], "fromBlock": "0x0", "toBlock": "latest"}])
print(len(d["pools"]) + 2, int(logs[0]["blockNumber"], 16) if logs else 0)
PY
)"
  cryo_to=$((head + 1))
  if [ "$ncontracts" -gt 1000 ]; then cryo_from=$first_busy; cryo_to=$((first_busy + ${BENCH_CRYO_SAMPLE:-10})); else cryo_from=0; fi
  echo "$cryo_from $cryo_to" > "$work/cryo.range"
  start_sim cryo
  # The contract list is read from deploy.json (5,002 addresses are over the kernel's limit
  # for one command-line argument).
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$work/cryo.time" python3 -c "
import cryo, json
d = json.load(open('$chain/deploy.json'))
addrs = [d['factory'], d['position_manager']] + [p['address'] for p in d['pools']]
cryo.freeze('logs', rpc='$sim_url', blocks=['$cryo_from:$cryo_to'], contract=addrs, output_dir='$work/cryo', no_report=True, no_verbose=True, max_concurrent_requests=16)" >/dev/null 2>&1 || echo "cryo failed" >&2
  python3 -c "print($(date +%s.%N) - $start)" > "$work/cryo.secs"
  stats cryo
  pool_topics=$(node -e '
    const {ethers} = require(process.env.TIDEWATER_NODE_MODULES + "/ethers");
    const a = require(process.env.TIDEWATER_NODE_MODULES + "/@uniswap/v3-core/artifacts/contracts/UniswapV3Pool.sol/UniswapV3Pool.json");
    const t = []; new ethers.Interface(a.abi).forEachEvent((e) => t.push(e.topicHash)); console.log(JSON.stringify(t))')
  start_sim cryot
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$work/cryot.time" python3 -c "
import cryo
kw = dict(rpc='$sim_url', blocks=['0:$((head + 1))'], no_report=True, no_verbose=True, max_concurrent_requests=16, inner_request_size=${BENCH_CRYO_SPAN:-25})
cryo.freeze('logs', topic0=$pool_topics, output_dir='$work/cryot/pools', **kw)
cryo.freeze('logs', contract=['$factory', '$npm'], output_dir='$work/cryot/fixed', **kw)" >/dev/null 2>&1 || echo "cryo (by selector) failed" >&2
  python3 -c "print($(date +%s.%N) - $start)" > "$work/cryot.secs"
  stats cryot
fi

python3 - "$work" "$head" <<'PY'
import json, sys, re, os
work, head = sys.argv[1], int(sys.argv[2])
def rss(name):
    t = open(f"{work}/{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
def bill(name):
    s = json.load(open(f"{work}/{name}.stats.json"))
    m = s["methods"]
    tot = {k: sum(v[k] for v in m.values()) for k in ("calls", "compute_units", "bytes_out")}
    return s, m, tot
tw = json.load(open(f"{work}/tw.json"))
blocks, logs = head + 1, tw["logs"]
print(f"\n{blocks} blocks, {logs} watched logs; per 1,000,000 blocks (per 1,000,000 watched logs)")
print(f"{'run':<22} {'requests':>18} {'compute units':>22} {'MB out':>16} {'CU/getLogs CU':>14} {'seconds':>8} {'RSS MiB':>8}")
runs = [("tidewater", "tw", tw["elapsed_secs"]),
        ("tidewater, budget", "twb", json.load(open(f"{work}/twb.json"))["elapsed_secs"]),
        ("tidewater, addresses", "twa", json.load(open(f"{work}/twa.json"))["elapsed_secs"])]
# cryo's contract-list run may cover a sample of busy blocks only: scaled per block (its cost
# is one request per contract per block), its per-log figure from tidewater's logs in the sample.
sample = {}
if os.path.exists(f"{work}/cryo.stats.json"):
    lo, hi = map(int, open(f"{work}/cryo.range").read().split())
    import glob, pyarrow.parquet as pq
    sample["cryo"] = (hi - lo, sum(pq.read_metadata(f).num_rows for f in glob.glob(f"{work}/cryo/*.parquet")))
    label = "cryo, contract list" if hi - lo == blocks else f"cryo, contract list ({hi - lo} busy blocks)"
    runs.append((label, "cryo", float(open(f"{work}/cryo.secs").read())))
if os.path.exists(f"{work}/cryot.stats.json"):
    runs.append(("cryo, by selector", "cryot", float(open(f"{work}/cryot.secs").read())))
import glob
try:
    import pyarrow.parquet as pq
    rows = lambda d: sum(pq.read_metadata(f).num_rows for f in glob.glob(f"{work}/{d}/*.parquet"))
    if os.path.exists(f"{work}/cryot"):
        print(f"cryo by selector: {rows('cryot/pools')} pool-event rows (any emitter, the spoofer's too), "
              f"{rows('cryot/fixed')} factory and position-manager rows; tidewater: {logs} watched logs")
except ImportError:
    pass
for label, name, secs in runs:
    s, m, tot = bill(name)
    gl = m.get("eth_getLogs", {}).get("compute_units", 0) or 1
    per_b, per_l = 1e6 / blocks, 1e6 / max(logs, 1)
    if name in sample:
        n_blocks, n_logs = sample[name]
        per_b = 1e6 / n_blocks
        per_l = 1e6 / n_logs if n_logs else float("nan")
    print(f"{label:<22} {tot['calls']*per_b:>9.0f} ({tot['calls']*per_l:>6.0f}) {tot['compute_units']*per_b:>12.0f} ({tot['compute_units']*per_l:>7.0f}) "
          f"{tot['bytes_out']*per_b/1e6:>7.0f} ({tot['bytes_out']*per_l/1e6:>6.0f}) {tot['compute_units']/gl:>14.2f} {secs:>8.1f} {rss(name):>8.0f}")
    for meth, v in sorted(m.items()):
        print(f"    {meth:<28} {v['calls']:>8} calls {v['compute_units']:>10} CU")
    if s.get("throttled"):
        print(f"    throttled (429): {s['throttled']}, refused for the logs cap: {s['too_many_logs']}")
# Uniswap V3 on mainnet: 11,000,000 blocks from 12,369,621. The last --block-checks-depth
# (1,024) blocks cost a header each, once per backfill: a fixed cost, apart from the per-block
# cost of the settled part, which is what scales.
s, m, tot = bill("tw")
window = min(1024, blocks)
deep_blocks = max(blocks - window, 1)
deep_calls = tot["calls"] - window
deep_cu = tot["compute_units"] - window * 16
gl = m["eth_getLogs"]["compute_units"]
print(f"\nfixed: {window} headers ({window * 16} CU) for the last {window} blocks; settled part: "
      f"{deep_calls / deep_blocks * 1e6:,.0f} requests and {deep_cu / deep_blocks * 1e6:,.0f} CU per 1,000,000 blocks, "
      f"{deep_cu / gl:.2f}x its eth_getLogs CU")
req_per_block, cu_per_block = deep_calls / deep_blocks, deep_cu / deep_blocks
print(f"extrapolated to 11,000,000 blocks at this density: {req_per_block*11e6:,.0f} requests, {cu_per_block*11e6:,.0f} CU; "
      f"{tw['elapsed_secs']/blocks*11e6/3600:.2f} h unthrottled (local node), {req_per_block*11e6/25/3600:.1f} h at 25 requests/s")
PY

fi

# 3. One-block chunks: opening, status, SQL and past-block state at many chunks. A chain
# shorter than BENCH_CHUNKS gets empty blocks mined on top (this anvil only, not the cache).
want=${BENCH_CHUNKS:-20000}
if [ "$head" -lt "$want" ]; then
  python3 -c "import sys; sys.path.insert(0, 'scripts'); import benchlib; benchlib.rpc('$url', 'anvil_mine', [hex($want - $head + 10)])"
  head=$(python3 -c "import sys; sys.path.insert(0, 'scripts'); import benchlib; print(int(benchlib.rpc('$url', 'eth_blockNumber', []), 16))")
fi
n=$(( want < head ? want : head ))
from=$((head - n + 1))
# The baseline gets its own copy, written by itself (an earlier binary may not read this one's
# manifest checkpoint), before anything is served (a first `serve` writes state snapshots).
many() { # binary data
  if [ "$from" -gt 0 ]; then
    "$1" backfill --rpc "$url" --data "$2" --to "$((from - 1))" --uniswap-v3-factory "$factory" \
      --uniswap-v3-position-manager "$npm" >/dev/null
  fi
  "$1" backfill --rpc "$url" --data "$2" --from "$from" --to "$head" --chunk-size 1 \
    --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" >/dev/null
}
many "$tw" "$work/many"
if [ -n "${BENCH_BASELINE:-}" ]; then
  many "$BENCH_BASELINE" "$work/many-old"
fi
chunks=$("$tw" status --data "$work/many" --json | python3 -c "import json, sys; print(json.load(sys.stdin)['chunks'])")
pool=$(python3 -c "import json;d=json.load(open('$chain/deploy.json'));print(d['hot'][0] if 'hot' in d else d['pools'][0]['address'])")
# A block near the head: on the full chain the pools exist only in its last ~4,000 blocks.
past=$((head - 1000))
measure() { # binary data label
  local b="$1" data="$2" label="$3" api_port
  api_port=$(free_port)
  python3 - "$b" "$data" "$label" "$api_port" "$pool" "$past" <<'PY'
import subprocess, sys, time, json, statistics, urllib.request
b, data, label, port, pool, past = sys.argv[1:7]
def timed(f, n=5):
    xs = []
    for _ in range(n):
        t = time.perf_counter(); f(); xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs)
status = timed(lambda: subprocess.run([b, "status", "--data", data, "--json"], check=True, capture_output=True))
api = f"http://127.0.0.1:{port}"
def start():
    t0 = time.perf_counter()
    srv = subprocess.Popen([b, "serve", "--data", data, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(api + "/ready", timeout=1).status == 200: break
        except Exception: pass
        time.sleep(0.01)
    return srv, (time.perf_counter() - t0) * 1000
# The first start folds the state and writes its snapshots; the second starts from them.
srv, first = start()
srv.terminate(); srv.wait()
srv, startup = start()
def sql(q="SELECT count(*) AS n FROM logs"):
    r = urllib.request.Request(api + "/v1/sql", json.dumps({"sql": q}).encode(), {"content-type": "application/json"})
    urllib.request.urlopen(r, timeout=60).read()
def state():
    urllib.request.urlopen(f"{api}/v1/pools/{pool}?block={past}", timeout=30).read()
q, p = timed(sql), timed(state)
# Every chunk's file of `blocks`, and the files of a 100-block range.
qb = timed(lambda: sql("SELECT count(*) AS n FROM blocks"), 3)
qr = timed(lambda: sql(f"SELECT count(*) AS n FROM blocks WHERE block_number BETWEEN {int(past)} AND {int(past) + 99}"), 3)
srv.terminate(); srv.wait()
print(f"{label:<26} status {status:>5.0f} ms   serve ready {first:>5.0f} ms (first) {startup:>5.0f} ms (again)   POST /v1/sql count(*) {q:>5.0f} ms   pool at block {past} {p:>5.0f} ms")
print(f"{'':<26} POST /v1/sql count(*) over every blocks file {qb:>6.0f} ms, over 100 blocks {qr:>6.0f} ms")
PY
}
echo
echo "$chunks chunks ($n of one block, blocks $from..$head):"
measure "$tw" "$work/many" "this build"
if [ -n "${BENCH_BASELINE:-}" ]; then
  measure "$BENCH_BASELINE" "$work/many-old" "baseline $(basename "$BENCH_BASELINE")"
fi
