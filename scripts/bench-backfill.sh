#!/usr/bin/env bash
# Backfill speed, side by side in one run against the same anvil on the cached large devnet
# chain (>= 500k logs): the RPC ceiling (plain concurrent eth_getLogs, results discarded),
# cryo (logs only), and tidewater (logs + blocks + every decoded table). Prints logs/s, ratios
# and peak RSS. Set BENCH_PRESET=small for a quick smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
preset="${BENCH_PRESET:-large}"
conc="${BENCH_CONCURRENCY:-16}"

scripts/install.sh
cargo build --release -q -p tidewater -p tidewater-chain --example rpc_ceiling
chain="$(scripts/devnet.sh build "$preset")"
port=$(free_port)
scripts/devnet.sh start "$preset" "$port" &
anvil=$!
work=$(mktemp -d)
trap 'kill $anvil 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
wait_rpc "$url"
head=$(curl -s -X POST -H 'content-type: application/json' \
  --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' "$url" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["result"],16))')
read -r factory npm <<<"$(python3 -c "import json;d=json.load(open('$chain/deploy.json'));print(d['factory'], d['position_manager'])")"
addrs=$(python3 -c "import json;d=json.load(open('$chain/deploy.json'));print(' '.join([d['factory'],d['position_manager']]+[p['address'] for p in d['pools']]))")
echo "chain: $preset, blocks 0..$head, $(echo $addrs | wc -w) contracts, concurrency $conc" >&2

peak_kb() { grep 'Maximum resident' "$1" | awk '{print $NF}'; }

# 1. RPC ceiling
/usr/bin/time -v -o "$work/ceiling.time" "$CARGO_TARGET_DIR/release/examples/rpc_ceiling" \
  "$url" 0 "$head" 1000 "$conc" $addrs > "$work/ceiling.json"
# 2. cryo (logs of the same contracts)
pyaddrs=$(python3 -c "import sys; print(repr(sys.argv[1:]))" $addrs)
start=$(date +%s.%N)
/usr/bin/time -v -o "$work/cryo.time" python3 -c "import cryo; cryo.freeze('logs', rpc='$url', blocks=['0:$((head+1))'], contract=$pyaddrs, output_dir='$work/cryo', no_report=True, no_verbose=True, max_concurrent_requests=$conc)"
cryo_secs=$(python3 -c "print($(date +%s.%N) - $start)")
cryo_logs=$(python3 -c "import pyarrow.parquet as pq, glob; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$work/cryo/*.parquet')))")
# 3. tidewater
/usr/bin/time -v -o "$work/tw.time" "$CARGO_TARGET_DIR/release/tidewater" backfill --rpc "$url" --data "$work/tw" \
  --to "$head" --json --concurrency "$conc" --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" > "$work/tw.json"

python3 - "$work" "$cryo_secs" "$cryo_logs" <<'PY'
import json, sys, re
work, cryo_secs, cryo_logs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def rss(name):
    t = open(f"{work}/{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
ceil = json.load(open(f"{work}/ceiling.json"))
tw = json.load(open(f"{work}/tw.json"))
rows = [
    ("rpc ceiling", ceil["logs"], ceil["seconds"], rss("ceiling")),
    ("cryo", cryo_logs, cryo_secs, rss("cryo")),
    ("tidewater", tw["logs"], tw["elapsed_secs"], rss("tw")),
]
print(f"{'':<12} {'logs':>9} {'seconds':>8} {'logs/s':>10} {'peak RSS MiB':>13}")
for name, logs, secs, mem in rows:
    print(f"{name:<12} {logs:>9} {secs:>8.2f} {logs/secs:>10.0f} {mem:>13.0f}")
print(f"tidewater / cryo logs/s: {(tw['logs']/tw['elapsed_secs'])/(cryo_logs/cryo_secs):.2f}x (target >= 2.5x)")
print(f"tidewater time / ceiling time: {tw['elapsed_secs']/ceil['seconds']:.2f}x (target <= 1.3x)")
print(f"tidewater peak RSS: {rss('tw'):.0f} MiB (target < 500 MiB)")
assert ceil["logs"] == cryo_logs == tw["logs"], f"log counts differ: {ceil['logs']} {cryo_logs} {tw['logs']}"
PY
