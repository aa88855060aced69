# Sourced by every script: one place for the paths that survive between runs on a machine.
# TIDEWATER_HOME holds tools (anvil, Uniswap artifacts, libduckdb), cached devnet chains and
# the cargo target directory, outside the checkout so a clean clone does not rebuild from zero.
export TIDEWATER_HOME="${TIDEWATER_HOME:-$HOME/.cache/tidewater}"
export TIDEWATER_TOOLS="$TIDEWATER_HOME/tools"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TIDEWATER_HOME/target}"
export DUCKDB_LIB_DIR="$TIDEWATER_TOOLS/node_modules/@duckdb/node-bindings-linux-x64"
export LD_LIBRARY_PATH="$DUCKDB_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TIDEWATER_ANVIL="$TIDEWATER_TOOLS/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
export TIDEWATER_NODE_MODULES="$TIDEWATER_TOOLS/node_modules"
export TIDEWATER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export TIDEWATER_BIN="$CARGO_TARGET_DIR/${TIDEWATER_PROFILE:-debug}/tidewater"

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until a JSON-RPC node answers at $1 (two minutes or more: the large devnet state takes ~40 s to load).
wait_rpc() {
  for _ in $(seq 1 2400); do
    if curl -sf -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$1" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.05
  done
  echo "no JSON-RPC node answered at $1" >&2; return 1
}
# Object storage for the bucket tests: Garage (built from crates.io into TIDEWATER_HOME: no
# conditional writes), etcd (Debian: the coordinator), moto (PyPI: conditional writes).
export TIDEWATER_GARAGE="${TIDEWATER_GARAGE:-$TIDEWATER_TOOLS/garage/bin/garage}"
export TIDEWATER_ETCD="${TIDEWATER_ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
export TIDEWATER_NATS_SERVER="${TIDEWATER_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"

# Benchmarks on a devnet preset (bench_small_devnet: small): installs, builds the release binary and the chain, starts anvil
# on it in the background; sets chain, port, anvil and work (a temp directory). On exit anvil is
# killed, $BENCH_ON_EXIT (if set) is run, and work is removed.
bench_devnet() { # preset
  scripts/install.sh
  cargo build --release -q -p tidewater
  chain="$(scripts/devnet.sh build "$1")"
  port=$(free_port)
  scripts/devnet.sh start "$1" "$port" &
  anvil=$!
  work=$(mktemp -d)
  trap 'kill $anvil 2>/dev/null || true; eval "${BENCH_ON_EXIT:-true}"; rm -rf "$work"' EXIT
  wait_rpc "http://127.0.0.1:$port"
}
bench_small_devnet() { bench_devnet small; }
