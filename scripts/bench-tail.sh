#!/usr/bin/env bash
# Tail latency on the small devnet: time from a block being mined (evm_mine returns) to its
# `pending` update on `tidewater tail --print-updates` (HTTP polling), p50/p99 over N blocks
# with swaps in them, and the time to handle reorgs of depth 1 and 10 (anvil_reorg returns →
# the new branch's tip is published). Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_small_devnet
for mode in "poll:${BENCH_POLL_MS:-250}" "ws"; do
python3 - "$CARGO_TARGET_DIR/release/tidewater" "http://127.0.0.1:$port" "$chain/deploy.json" "$work/$mode" "${BENCH_BLOCKS:-200}" "$mode" <<'PY'
import json, subprocess, sys, threading, time, urllib.request, statistics, resource
binary, url, deploy, work, n_blocks, mode = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5]), sys.argv[6]
if mode == "ws":
    follow = ["--ws", url.replace("http://", "ws://"), "--poll-interval-ms", "60000"]
else:
    follow = ["--poll-interval-ms", mode.split(":")[1]]
sys.path.insert(0, "scripts")
import benchlib
rpc = lambda method, params: benchlib.rpc(url, method, params)
p = subprocess.Popen([binary, "run", "--rpc", url, "--data", f"{work}/data", "--confirmations", "20",
    *follow, "--print-updates", "--uniswap-v3-factory", deploy["factory"],
    "--uniswap-v3-position-manager", deploy["position_manager"]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
seen = {}
def reader():
    for line in p.stdout:
        u = json.loads(line)
        if u["status"] == "pending":
            seen[u["block_hash"]] = time.perf_counter()
threading.Thread(target=reader, daemon=True).start()
time.sleep(3)
wait_for = lambda h: benchlib.wait_for(seen, h)
lat = []
for i in range(n_blocks):
    rpc("evm_mine", [])
    t0 = time.perf_counter()
    h = rpc("eth_getBlockByNumber", ["latest", False])["hash"]
    lat.append((wait_for(h) - t0) * 1000)
reorg = {}
for depth in (1, 10):
    times = []
    for _ in range(5):
        for _ in range(depth + 1): rpc("evm_mine", [])
        time.sleep(0.1)
        t0 = time.perf_counter()
        # A transfer makes the new branch differ (empty blocks could hash the same).
        tx = {"from": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "value": hex(1 + len(times))}
        rpc("anvil_reorg", [depth, [[tx, 0]]])
        h = rpc("eth_getBlockByNumber", ["latest", False])["hash"]
        times.append((wait_for(h) - t0) * 1000)
    reorg[depth] = statistics.median(times)
p.terminate(); p.wait()
lat.sort()
q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))]
print(f"mode {mode}, {n_blocks} blocks")
print(f"mined -> pending in hot buffer: p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms")
print(f"reorg handled (anvil_reorg returns -> new tip published): depth 1 {reorg[1]:.1f} ms, depth 10 {reorg[10]:.1f} ms (median of 5)")
PY
done
