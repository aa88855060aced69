#!/usr/bin/env bash
# The main job end to end on a local devnet: install tools, build tidewater, build (once) and
# start the devnet chain, backfill it into ./data, and query pool activity with SQL.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install.sh
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
"$bin" verify --data "$data"
