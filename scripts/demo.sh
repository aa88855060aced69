#!/usr/bin/env bash
# The main job end to end on a local devnet: install tools, build tidewater, build (once) and
# start the devnet chain, backfill it into ./data, query pool activity with SQL, then follow the
# head with the HTTP API on and ask it for pool state, the liquidity distribution and SQL.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

TIDEWATER_SKIP_GARAGE=1 scripts/install.sh
cargo build --release -p tidewater
bin="$CARGO_TARGET_DIR/release/tidewater"
chain="$(scripts/devnet.sh build small)"
port=$(free_port)
scripts/devnet.sh start small "$port" &
anvil=$!
trap 'kill $anvil 2>/dev/null || true' EXIT
wait_rpc "http://127.0.0.1:$port"
factory=$(python3 -c "import json;print(json.load(open('$chain/deploy.json'))['factory'])")
npm=$(python3 -c "import json;print(json.load(open('$chain/deploy.json'))['position_manager'])")
data="${DATA:-./data}"

"$bin" backfill --rpc "http://127.0.0.1:$port" --data "$data" --from 0 --to latest \
  --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm"
"$bin" sql --data "$data" "
  SELECT '0x' || lower(hex(p.pool)) AS pool, p.fee, count(s.block_number) AS swaps,
         sum(abs(s.amount0::HUGEINT))::VARCHAR AS volume0, max(s.block_number) AS last_swap_block
  FROM pools_created p LEFT JOIN swaps s ON s.address = p.pool
  GROUP BY ALL ORDER BY swaps DESC"

api=$(free_port)
"$bin" run --rpc "http://127.0.0.1:$port" --data "$data" --confirmations 2 \
  --uniswap-v3-factory "$factory" --uniswap-v3-position-manager "$npm" \
  --listen "127.0.0.1:$api" &
tw=$!
trap 'kill $tw $anvil 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$api/ready" >/dev/null && break
  kill -0 $tw 2>/dev/null || { echo "tidewater run exited" >&2; exit 1; }
  sleep 0.2
done
python3 - "http://127.0.0.1:$api" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
get = lambda path: json.load(urllib.request.urlopen(base + path))
d = get("/v1/pools")
print(f"block {d['block']['number']}: {len(d['pools'])} pools, the five with most initialized ticks:")
pools = sorted(d["pools"], key=lambda p: -p["initialized_ticks"])
for p in pools[:5]:
    print(f"  {p['address']} fee {p['fee']:>5} tick {p['tick']:>7} liquidity {p['liquidity']}")
t = get(f"/v1/pools/{pools[0]['address']}/ticks")
print(f"liquidity distribution of {t['pool']} (current tick {t['tick']}):")
for i in t["intervals"]:
    print(f"  [{i['tick_lower']:>7}, {i['tick_upper']:>7})  {i['liquidity']}")
req = urllib.request.Request(base + "/v1/sql", json.dumps(
    {"sql": "SELECT confirmed, count(*) AS swaps FROM swaps GROUP BY confirmed"}).encode())
print("POST /v1/sql:", json.load(urllib.request.urlopen(req))["rows"])
PY
echo
echo "The liquidity page: http://127.0.0.1:$api/   (pools, #/pool/<address>, #/ops)"
if [ -z "${DEMO_NO_WAIT:-}" ] && [ -t 0 ]; then
  # New blocks so the page has live blocks to show, until Ctrl-C.
  echo "A block is mined every 3 s so the live view moves; press Ctrl-C to stop." >&2
  trap 'kill -TERM $tw 2>/dev/null; wait $tw 2>/dev/null; "$bin" verify --data "$data"; kill $anvil 2>/dev/null; exit 0' INT TERM
  while kill -0 $tw 2>/dev/null; do
    curl -sf -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"evm_mine","params":[]}' "http://127.0.0.1:$port" >/dev/null || true
    sleep 3
  done
fi
kill -TERM $tw; wait $tw || true
"$bin" verify --data "$data"
