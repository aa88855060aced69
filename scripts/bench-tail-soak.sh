#!/usr/bin/env bash
# Tail steady state: anvil mining one block per second with 200 swap transactions in each,
# `tidewater run --ws` following it; samples the tail's RSS and CPU every 10 s for
# BENCH_SECONDS (default 180; the issue's target run is 600) and prints them with the lag.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install.sh
cargo build --release -q -p tidewater
chain="$(scripts/devnet.sh build small)"
port=$(free_port)
work=$(mktemp -d)
"$TIDEWATER_ANVIL" --code-size-limit 100000 --gas-limit 1000000000 --silent --port "$port" --max-persisted-states 0 \
  --load-state "$chain/state.json" --block-time 1 &
anvil=$!
trap 'kill $anvil 2>/dev/null || true; rm -rf "$work"' EXIT
wait_rpc "http://127.0.0.1:$port"
python3 - "$CARGO_TARGET_DIR/release/tidewater" "$port" "$chain/deploy.json" "$work" "${BENCH_SECONDS:-180}" "${BENCH_TXS:-200}" <<'PY'
import json, subprocess, sys, time, urllib.request, random, os
binary, port, deploy, work, seconds, txs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
url = f"http://127.0.0.1:{port}"
def post(body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))
acct = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
def word(x): return format(x, "064x")
def addr(a): return word(int(a, 16))
def swap_call(p, rng):
    t0, t1 = p["token0"], p["token1"]
    tin, tout = (t0, t1) if rng.random() < 0.5 else (t1, t0)
    # exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))
    data = "0x414bf389" + addr(tin) + addr(tout) + word(p["fee"]) + addr(acct) + word(1 << 40) \
        + word(rng.randrange(1, 10**6) * 10**12) + word(0) + word(0)
    return {"from": acct, "to": deploy["swap_router"], "data": data, "gas": hex(400000)}
rng = random.Random(1)
import socket, threading, http.client
with socket.socket() as s_:
    s_.bind(("127.0.0.1", 0)); api_port = s_.getsockname()[1]
# The API is on (as `run` serves it by default), with one SSE client following the stream.
tw = subprocess.Popen([binary, "run", "--rpc", url, "--ws", f"ws://127.0.0.1:{port}", "--data", f"{work}/data",
    "--confirmations", "20", "--uniswap-v3-factory", deploy["factory"], "--uniswap-v3-position-manager",
    deploy["position_manager"], "--listen", f"127.0.0.1:{api_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sse_events = [0]
def sse():
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", api_port); c.request("GET", "/v1/stream")
            r = c.getresponse()
            for line in r.fp:
                if line.startswith(b"event:"): sse_events[0] += 1
        except OSError:
            time.sleep(0.2)
threading.Thread(target=sse, daemon=True).start()
tick = os.sysconf("SC_CLK_TCK")
def sample():
    stat = open(f"/proc/{tw.pid}/stat").read().split(")")[-1].split()
    cpu = (int(stat[11]) + int(stat[12])) / tick
    rss = next(int(l.split()[1]) for l in open(f"/proc/{tw.pid}/status") if l.startswith("VmRSS")) / 1024
    return cpu, rss
def head():
    b = post({"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["latest", False]})["result"]
    return f"{int(b['number'], 16)}/{len(b['transactions'])}"

start = time.time(); last = (start, sample()[0]); next_sample = start + 10
print(f"{'t s':>5} {'RSS MiB':>8} {'CPU %':>6} {'head/txs':>9} {'checkpoint':>10}")
rows = []
while time.time() - start < seconds:
    t_loop = time.time()
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [swap_call(rng.choice(deploy["pools"]), rng)]} for i in range(txs)]
    post(batch)
    if time.time() >= next_sample:
        cpu, rss = sample(); now = time.time()
        pct = 100 * (cpu - last[1]) / (now - last[0]); last = (now, cpu); next_sample += 10
        st = subprocess.run([binary, "status", "--data", f"{work}/data", "--json"], capture_output=True, text=True)
        try: cp = json.loads(st.stdout)["checkpoint"]["block_number"]
        except Exception: cp = -1
        rows.append(rss)
        print(f"{now - start:>5.0f} {rss:>8.1f} {pct:>6.1f} {head():>9} {cp:>10}", flush=True)
    time.sleep(max(0, 1 - (time.time() - t_loop)))
tw.terminate(); tw.wait()
# The manifest is a checkpoint and the entries since: ask the dataset, not its files.
out = subprocess.run([binary, "sql", "--data", f"{work}/data", "--format", "json",
    f"SELECT count(*) AS n FROM swaps WHERE block_number > {deploy['last_block']}"], capture_output=True, text=True, check=True).stdout
swaps = json.loads(out)[0]["n"] if out.strip().startswith("[") else out.strip()
print(f"swaps committed after the devnet's history: {swaps}; SSE events received: {sse_events[0]}")
if rows:
    print(f"RSS first sample {rows[0]:.1f} MiB, last {rows[-1]:.1f} MiB, max {max(rows):.1f} MiB")
PY
