#!/usr/bin/env bash
# What the tail pays for empty answers on full blooms, side by side in one run: `tidewater tail`
# from block 0 of the mainnet-shaped devnet (BENCH_PRESET, default the test chain
# mainnet-shape-mini) through the provider simulator (Alchemy's compute-unit table), watching a
# quiet set on busy blocks: three contracts that emit nothing there (the factory once its pools
# exist, the router, WETH): a busy block's bloom is so full that it says "maybe" for their
# addresses by chance; until the checkpoint reaches the head.
#   --empty-checks at-once     every empty answer whose bloom says maybe: by hash again, then receipts
#   --empty-checks auto        the default: at once while a live state folds the hot blocks (as
#                              here: the API is on to read the tail's metrics), else as deferred
#                              for a full bloom's maybe and at once for a sparser one
#   --empty-checks deferred    every maybe at compaction, one ranged eth_getLogs per run of such blocks
# (BENCH_MODES picks some of them.)
# Prints requests and compute units per method and per block for each, and the logs each wrote
# (which must agree).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
preset="${BENCH_PRESET:-mainnet-shape-mini}"

pids=()
BENCH_ON_EXIT='kill "${pids[@]}" 2>/dev/null || true'
bench_devnet "$preset" >/dev/null
cargo build --release -q -p tidewater-testkit
tw="${BENCH_BIN:-$CARGO_TARGET_DIR/release/tidewater}"
sim_bin="$CARGO_TARGET_DIR/release/tidewater-provider-sim"
url="http://127.0.0.1:$port"
head=$(python3 -c "import sys; sys.path.insert(0, 'scripts'); import benchlib; print(int(benchlib.rpc('$url', 'eth_blockNumber', []), 16))")
read -r factory router weth <<<"$(python3 -c "import json;d=json.load(open('$chain/deploy.json'));print(d['factory'], d['swap_router'], d['weth'])")"
transfer='Transfer(address indexed from, address indexed to, uint256 value)'
echo "chain: $preset, blocks 0..$head, watching $factory $router $weth" >&2

for mode in ${BENCH_MODES:-at-once auto deferred}; do
  out="$work/sim.$mode.out"
  "$sim_bin" --upstream "$url" --profile alchemy > "$out" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
  sim_url=$(head -1 "$out")
  api_port=$(free_port)
  start=$(date +%s.%N)
  "$tw" tail --rpc "$sim_url" --data "$work/$mode" --contract "$factory" --contract "$router" --contract "$weth" --event "$transfer" \
    --confirmations 3 --compact-interval-secs 1 --poll-interval-ms 50 --empty-checks "$mode" \
    --listen "127.0.0.1:$api_port" 2>"$work/$mode.log" &
  pid=$!
  pids+=($pid)
  until curl -s "127.0.0.1:$api_port/metrics" | grep -Eq "^tidewater_checkpoint_block $((head - 3))(\.0)?$"; do sleep 0.2; done
  secs=$(python3 -c "print($(date +%s.%N) - $start)")
  curl -s "127.0.0.1:$api_port/metrics" | grep -E "^tidewater_(empty_answers_deferred|blocks_repaired)_total" > "$work/$mode.metrics" || true
  kill -INT $pid; wait $pid || true
  curl -s "$sim_url/stats" > "$work/$mode.stats.json"
  echo "$secs" > "$work/$mode.secs"
  "$tw" sql --data "$work/$mode" --format json "SELECT count(*) AS n FROM logs" > "$work/$mode.logs"
done

python3 - "$work" "$head" "${BENCH_MODES:-at-once auto deferred}" <<'PY'
import json, sys
work, head = sys.argv[1], int(sys.argv[2])
blocks = head - 2
print(f"\ntail over blocks 0..{head - 3} ({blocks} blocks), three quiet contracts on full blooms")
print(f"{'--empty-checks':<16} {'requests':>9} {'CU':>10} {'CU/block':>9} {'receipts':>9} {'getLogs':>8} {'seconds':>8}  logs  counters")
for mode in sys.argv[3].split():
    s = json.load(open(f"{work}/{mode}.stats.json"))["methods"]
    calls = sum(v["calls"] for v in s.values())
    cu = sum(v["compute_units"] for v in s.values())
    rec = s.get("eth_getBlockReceipts", {}).get("calls", 0)
    gl = s.get("eth_getLogs", {}).get("calls", 0)
    secs = float(open(f"{work}/{mode}.secs").read())
    logs = open(f"{work}/{mode}.logs").read().strip()
    counters = " ".join(l.split()[1] for l in open(f"{work}/{mode}.metrics"))
    print(f"{mode:<16} {calls:>9} {cu:>10} {cu / blocks:>9.1f} {rec:>9} {gl:>8} {secs:>8.1f}  {logs} {counters}")
    for m, v in sorted(s.items()):
        print(f"    {m:<26} {v['calls']:>7} calls {v['compute_units']:>9} CU")
PY
