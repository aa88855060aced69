#!/usr/bin/env bash
# Takeover time of `run --ha` on the small devnet: two instances on one data directory, the
# leader killed with SIGKILL BENCH_KILLS times (default 10) while swaps are mined; the time from
# the kill to the standby's /ready saying `leader`. Default lease (3 s) unless BENCH_LEASE_MS.
# BENCH_STORE=moto puts the dataset in a bucket of a moto server started here (each instance
# with its own replica; the lease and commit log by conditional puts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_small_devnet
python3 - "$CARGO_TARGET_DIR/release/tidewater" "http://127.0.0.1:$port" "$chain/deploy.json" "$work" \
  "${BENCH_KILLS:-10}" "${BENCH_LEASE_MS:-3000}" "${BENCH_STORE:-local}" <<'PY'
import json, os, socket, statistics, subprocess, sys, time, urllib.request
binary, url, deploy, work, kills, lease, store = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5]), sys.argv[6], sys.argv[7]
sys.path.insert(0, "scripts")
import benchlib
rpc = lambda method, params: benchlib.rpc(url, method, params)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

data, env, moto = f"{work}/data", dict(os.environ), None
if store == "moto":
    mport = socket.socket(); mport.bind(("127.0.0.1", 0)); mp = mport.getsockname()[1]; mport.close()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(mp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{mp}/bench", method="PUT")); break
        except OSError:
            time.sleep(0.1)
    data = "s3://bench/ha"
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
               AWS_ENDPOINT=f"http://127.0.0.1:{mp}", AWS_ALLOW_HTTP="true")

def start(port):
    return subprocess.Popen([binary, "run", "--ha", "--ha-lease-ms", lease, "--rpc", url, "--data", data,
        "--confirmations", "4", "--compact-blocks", "2", "--poll-interval-ms", "50", "--listen", f"127.0.0.1:{port}",
        "--uniswap-v3-factory", deploy["factory"], "--uniswap-v3-position-manager", deploy["position_manager"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, "TIDEWATER_CACHE_DIR": f"{work}/cache-{port}"})

def role(port):
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()).get("role")
    except urllib.error.HTTPError as e:
        return json.loads(e.read()).get("role")
    except Exception:
        return None

def ready(port):
    """(status, head) of /ready."""
    try:
        return 200, json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).read()).get("head")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()).get("head")
    except Exception:
        return None, None

def wait(f, limit=60):
    t = time.time()
    while not f():
        if time.time() - t > limit: raise SystemExit("bench: timed out")
        time.sleep(0.01)

ports = [free_port(), free_port()]
procs = [start(ports[0]), start(ports[1])]
wait(lambda: sorted([role(ports[0]) or "", role(ports[1]) or ""]) == ["leader", "standby"], 120)
# How far behind the leader a standby serves the head: from a block mined to each instance's
# /ready saying that block (both at once: the same poll interval, the same node).
lags = {"leader": [], "standby": []}
by_role = {role(p): p for p in ports}
for _ in range(20):
    rpc("evm_mine", [])
    head = int(rpc("eth_blockNumber", []), 16)
    t0, seen = time.perf_counter(), {}
    while len(seen) < 2 and time.perf_counter() - t0 < 10:
        for r, p in by_role.items():
            if r not in seen and ready(p) == (200, head):
                seen[r] = time.perf_counter() - t0
        time.sleep(0.002)
    for r, v in seen.items(): lags[r].append(v * 1000)
    time.sleep(0.3)
for r, v in lags.items():
    v.sort()
    print(f"block mined -> /ready at that head, {r}: p50 {statistics.median(v):.0f} ms, worst {v[-1]:.0f} ms ({len(v)} blocks)")
times, at_head = [], []
for _ in range(kills):
    for _ in range(3): rpc("evm_mine", [])
    time.sleep(1.0)
    l = 0 if role(ports[0]) == "leader" else 1
    procs[l].kill(); procs[l].wait()
    t0 = time.perf_counter()
    wait(lambda: role(ports[1 - l]) == "leader")
    times.append(time.perf_counter() - t0)
    # The new leader ready (200) at the node's head: it serves the head again, now writing.
    wait(lambda: ready(ports[1 - l]) == (200, int(rpc("eth_blockNumber", []), 16)))
    at_head.append(time.perf_counter() - t0)
    procs[l] = start(ports[l])
    wait(lambda: role(ports[l]) == "standby")
for p in procs: p.terminate(); p.wait()
if moto: moto.terminate(); moto.wait()
times.sort()
print(f"run --ha on {data}, lease {lease} ms, {kills} kill -9 of the leader: takeover median {statistics.median(times):.2f} s, "
      f"worst {times[-1]:.2f} s, best {times[0]:.2f} s")
at_head.sort()
print(f"  kill -9 -> the new leader ready at the head: median {statistics.median(at_head):.2f} s, worst {at_head[-1]:.2f} s")
PY
