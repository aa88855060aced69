#!/usr/bin/env bash
# The dataset on object storage vs a local directory, side by side in one run, on a devnet
# (BENCH_PRESET, default small; mainnet-shape-mini is larger):
#  1. backfill of the whole chain into a local directory, into moto (conditional puts) and into
#     Garage + etcd (the coordinator), each BENCH_ROUNDS times (default 3) interleaved, best and
#     median wall time; also with --chunk-size 8 (many small commits: the per-commit cost);
#  2. `serve` over each: POST /v1/sql (a group-by over logs) and the past-block state of a pool
#     (/v1/pools/{pool}?block=N at random confirmed blocks), p50 / p99 of 200 requests each.
# Servers are started here and stopped on exit. Prints one report.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_devnet "${BENCH_PRESET:-small}"
python3 - "$CARGO_TARGET_DIR/release/tidewater" "http://127.0.0.1:$port" "$chain/deploy.json" "$work" \
  "${BENCH_ROUNDS:-3}" <<'PY'
import json, os, random, socket, statistics, subprocess, sys, time, urllib.request
binary, rpc_url, deploy, work, rounds = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], int(sys.argv[5])
sys.path.insert(0, "scripts")
import benchlib

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(p):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listens on {p}")

procs = []
def spawn(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw); procs.append(p); return p

# moto
moto = free_port()
spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto)]); wait_port(moto)
urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{moto}/bench", method="PUT"))
# Garage, single node, and etcd
g = f"{work}/garage"; os.makedirs(g)
gport, grpc, gadmin = free_port(), free_port(), free_port()
open(f"{g}/garage.toml", "w").write(f'''metadata_dir = "{g}/meta"
data_dir = "{g}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{grpc}"
rpc_public_addr = "127.0.0.1:{grpc}"
rpc_secret = "{'cd' * 32}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{gport}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{gadmin}"
admin_token = "bench"
''')
garage = os.environ["TIDEWATER_GARAGE"]
spawn([garage, "-c", f"{g}/garage.toml", "server"]); wait_port(gport)
def gcli(*a):
    for _ in range(40):
        r = subprocess.run([garage, "-c", f"{g}/garage.toml", *a], capture_output=True, text=True)
        if r.returncode == 0: return r.stdout
        time.sleep(0.25)
    raise SystemExit(f"garage {a}: {r.stderr}")
node = gcli("node", "id", "-q").strip().split("@")[0]
gcli("layout", "assign", "-z", "dc1", "-c", "1G", node); gcli("layout", "apply", "--version", "1")
gcli("bucket", "create", "bench")
key = gcli("key", "create", "bench")
field = lambda name: next(l.split(":", 1)[1].strip() for l in key.splitlines() if l.strip().startswith(name))
gkey = (field("Key ID"), field("Secret key"))
gcli("bucket", "allow", "--read", "--write", "--owner", "bench", "--key", "bench")
etcd = free_port(); epeer = free_port()
spawn([os.environ["TIDEWATER_ETCD"], "--data-dir", f"{work}/etcd", "--listen-client-urls", f"http://127.0.0.1:{etcd}",
       "--advertise-client-urls", f"http://127.0.0.1:{etcd}", "--listen-peer-urls", f"http://127.0.0.1:{epeer}",
       "--initial-advertise-peer-urls", f"http://127.0.0.1:{epeer}", "--initial-cluster", f"default=http://127.0.0.1:{epeer}"],
      env={**os.environ, "ETCD_UNSUPPORTED_ARCH": "amd64"}); wait_port(etcd)

def env_of(kind, cache):
    e = {**os.environ, "TIDEWATER_LOG": "warn", "TIDEWATER_CACHE_DIR": cache}
    e.pop("TIDEWATER_COORDINATOR", None)
    if kind == "moto":
        e.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
                 AWS_ENDPOINT=f"http://127.0.0.1:{moto}", AWS_ALLOW_HTTP="true")
    elif kind == "garage":
        e.update(AWS_ACCESS_KEY_ID=gkey[0], AWS_SECRET_ACCESS_KEY=gkey[1], AWS_REGION="garage",
                 AWS_ENDPOINT=f"http://127.0.0.1:{gport}", AWS_ALLOW_HTTP="true",
                 TIDEWATER_COORDINATOR=f"etcd://127.0.0.1:{etcd}")
    return e

flags = ["--rpc", rpc_url, "--uniswap-v3-factory", deploy["factory"], "--uniswap-v3-position-manager", deploy["position_manager"]]
head = int(benchlib.rpc(rpc_url, "eth_blockNumber", []), 16)
n = 0
def data_of(kind):
    global n; n += 1
    return (f"{work}/local-{n}" if kind == "local" else f"s3://bench/run-{n}"), f"{work}/cache-{n}"

kinds = ["local", "moto", "garage"]
times = {(k, c): [] for k in kinds for c in ("default", "8")}
kept = {}
for r in range(rounds):
    for chunk in ("default", "8"):
        for k in kinds:
            data, cache = data_of(k)
            extra = [] if chunk == "default" else ["--chunk-size", chunk]
            t0 = time.perf_counter()
            subprocess.run([binary, "backfill", "--data", data, "--to", str(head), *extra, *flags], env=env_of(k, cache), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[(k, chunk)].append(time.perf_counter() - t0)
            kept[k] = (data, cache)
print(f"backfill of {head + 1} blocks ({rounds} rounds, interleaved; best / median wall time):")
for chunk in ("default", "8"):
    base = min(times[("local", chunk)])
    for k in kinds:
        t = times[(k, chunk)]
        print(f"  chunks {chunk:>7}: {k:<7} best {min(t):6.2f} s  median {statistics.median(t):6.2f} s  "
              f"({min(t) / base:4.2f}x local)")

def lat(f, count=200):
    out = []
    for _ in range(count):
        t0 = time.perf_counter(); f(); out.append((time.perf_counter() - t0) * 1000)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99) - 1]

print("serve over each (p50 / p99 of 200 requests):")
sql = json.dumps({"sql": "select address, count(*) as n from logs group by address order by n desc"}).encode()
for k in ("local", "moto", "garage"):
    data, cache = kept[k]
    api_port = free_port()
    p = spawn([binary, "serve", "--data", data, "--listen", f"127.0.0.1:{api_port}"], env=env_of(k, f"{cache}-serve"))
    wait_port(api_port)
    api = f"http://127.0.0.1:{api_port}"
    pools = json.load(urllib.request.urlopen(f"{api}/v1/pools"))
    pool = (pools.get("pools") if isinstance(pools, dict) else pools)[0]
    pool = pool["address"] if isinstance(pool, dict) else pool
    post = lambda: urllib.request.urlopen(urllib.request.Request(f"{api}/v1/sql", sql, {"content-type": "application/json"})).read()
    past = lambda: urllib.request.urlopen(f"{api}/v1/pools/{pool}?block={random.randint(head // 2, head)}").read()
    (s50, s99), (b50, b99) = lat(post), lat(past)
    print(f"  {k:<7} /v1/sql p50 {s50:6.2f} ms p99 {s99:6.2f} ms   past-block pool state p50 {b50:6.2f} ms p99 {b99:6.2f} ms")
    p.terminate(); p.wait()
for p in procs:
    p.terminate()
    try: p.wait(5)
    except subprocess.TimeoutExpired: p.kill()
PY
