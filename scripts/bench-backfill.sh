#!/usr/bin/env bash
# Backfill speed, side by side in one run against the same anvil on the cached large devnet
# chain (>= 500k logs): the RPC ceiling (plain concurrent eth_getLogs, results discarded),
# cryo (logs only), and tidewater (logs + blocks + every decoded table). Prints logs/s, ratios
# and peak RSS. Set BENCH_PRESET=small for a quick smoke run, BENCH_PRESET=dense for ~300
# watched logs a block. The ceiling is also measured with small requests (32-block ranges 8 in
# flight, 2-block ranges 16 in flight): anvil serves small answers with much less CPU, so the
# fastest shape is the ceiling tidewater is held to.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
preset="${BENCH_PRESET:-large}"
conc="${BENCH_CONCURRENCY:-16}"

scripts/install.sh
cargo build --release -q -p tidewater
cargo build --release -q -p tidewater-chain --example rpc_ceiling
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

# 1. cryo (logs of the same contracts), once: it is the slow one
pyaddrs=$(python3 -c "import sys; print(repr(sys.argv[1:]))" $addrs)
start=$(date +%s.%N)
/usr/bin/time -v -o "$work/cryo.time" python3 -c "import cryo; cryo.freeze('logs', rpc='$url', blocks=['0:$((head+1))'], contract=$pyaddrs, output_dir='$work/cryo', no_report=True, no_verbose=True, max_concurrent_requests=$conc)"
cryo_secs=$(python3 -c "print($(date +%s.%N) - $start)")
cryo_logs=$(python3 -c "import pyarrow.parquet as pq, glob; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$work/cryo/*.parquet')))")
# 2. RPC ceiling and tidewater, alternating, ${BENCH_ROUNDS:-3} rounds (medians are reported)
for r in $(seq 1 "${BENCH_ROUNDS:-3}"); do
  /usr/bin/time -v -o "$work/ceiling.$r.time" "$CARGO_TARGET_DIR/release/examples/rpc_ceiling" \
    "$url" 0 "$head" 1000 "$conc" $addrs > "$work/ceiling.$r.json"
  "$CARGO_TARGET_DIR/release/examples/rpc_ceiling" "$url" 0 "$head" 32 8 $addrs > "$work/ceiling_small.$r.json"
  "$CARGO_TARGET_DIR/release/examples/rpc_ceiling" "$url" 0 "$head" 2 16 $addrs > "$work/ceiling_tiny.$r.json"
  rm -rf "$work/tw"
  /usr/bin/time -v -o "$work/tw.$r.time" "$CARGO_TARGET_DIR/release/tidewater" backfill --rpc "$url" --data "$work/tw" \
    --to "$head" --json --concurrency "$conc" --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" > "$work/tw.$r.json"
done

python3 - "$work" "$cryo_secs" "$cryo_logs" "${BENCH_ROUNDS:-3}" <<'PY'
import json, sys, re, statistics
work, cryo_secs, cryo_logs, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss(name):
    t = open(f"{work}/{name}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
ceil = [json.load(open(f"{work}/ceiling.{r}.json")) for r in range(1, rounds + 1)]
tw = [json.load(open(f"{work}/tw.{r}.json")) for r in range(1, rounds + 1)]
c_secs = statistics.median(c["seconds"] for c in ceil)
t_secs = statistics.median(t["elapsed_secs"] for t in tw)
c_rss = max(rss(f"ceiling.{r}") for r in range(1, rounds + 1))
t_rss = max(rss(f"tw.{r}") for r in range(1, rounds + 1))
logs = tw[0]["logs"]
print(f"{'':<12} {'logs':>9} {'seconds':>8} {'logs/s':>10} {'peak RSS MiB':>13}")
for name, n, secs, mem in [("rpc ceiling", ceil[0]["logs"], c_secs, c_rss), ("cryo", cryo_logs, cryo_secs, rss("cryo")), ("tidewater", logs, t_secs, t_rss)]:
    print(f"{name:<12} {n:>9} {secs:>8.2f} {n/secs:>10.0f} {mem:>13.0f}")
shapes = {}
for name, label in [("ceiling", "1000-block ranges, --concurrency in flight"), ("ceiling_small", "32-block ranges, 8 in flight"), ("ceiling_tiny", "2-block ranges, 16 in flight")]:
    shapes[label] = statistics.median(json.load(open(f"{work}/{name}.{r}.json"))["seconds"] for r in range(1, rounds + 1))
for label, secs in shapes.items():
    print(f"rpc ceiling, {label}: {secs:.2f} s; tidewater takes {t_secs / secs:.2f}x")
best = min(shapes.values())
print("per round (tidewater s): " + ", ".join(f"{t['elapsed_secs']:.2f}" for t in tw))
print(f"tidewater / cryo logs/s: {(logs/t_secs)/(cryo_logs/cryo_secs):.2f}x (target >= 2.5x)")
print(f"tidewater time / fastest ceiling (medians): {t_secs/best:.2f}x (target <= 1.3x)")
print(f"tidewater peak RSS: {t_rss:.0f} MiB (target < 500 MiB)")
assert all(c["logs"] == cryo_logs == t["logs"] for c, t in zip(ceil, tw)), "log counts differ"
PY
