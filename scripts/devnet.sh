#!/usr/bin/env bash
# The devnet: anvil with the real Uniswap V3 contracts and seedable traffic.
#
#   scripts/devnet.sh build NAME [traffic flags]   build (once per machine) a chain and cache it
#   scripts/devnet.sh path NAME                    print the cached chain's folder
#   scripts/devnet.sh start NAME [PORT]            run anvil on the cached chain (foreground)
#
# A cached chain is $TIDEWATER_HOME/devnet/NAME-<key>/{state.json,deploy.json}, where key hashes
# the traffic flags and the generator script, so a change to either builds a new chain.
# Presets: small (tests: ~10 pools, hundreds of positions), large (benchmarks: >= 500k logs),
# dense (benchmarks: ~300 watched swaps in most blocks, ~350k watched logs in ~1,200 blocks),
# mainnet-shape (benchmarks: 5,000 pools, 200 noise contracts and a spoofer, saturated blooms,
# 100,000 empty blocks, 1,000,000 watched logs; ~40 min to build) and mainnet-shape-mini (tests:
# the same shape, 600 pools). The mainnet-shaped chains run on the Cancun rules (see
# chain_flags); a chain's folder holds them in anvil.flags, for whoever starts anvil on it.
set -euo pipefail
source "$(dirname "$0")/env.sh"

ANVIL_FLAGS=(--code-size-limit 100000 --gas-limit 1000000000 --silent)
# Not part of the cache key: without it anvil persists old states under ~/.foundry/anvil/tmp
# (tens of GB for the large chain) and never removes them.
RUNTIME_FLAGS=(--max-persisted-states 0)

preset_flags() {
  case "$1" in
    small) echo "--seed 7 --pools 10 --rounds 260 --swaps-per-tx 12" ;;
    large) echo "--seed 11 --pools 24 --rounds 6000 --swaps-per-tx 125" ;;
    dense) echo "--seed 13 --pools 24 --rounds 1200 --swaps-per-tx 300" ;;
    mainnet-shape) echo "--seed 5 --pools 5000 --hot 300 --noise 200 --watched-logs 1000000 --logs-per-block 300 --sparse 100000" ;;
    mainnet-shape-mini) echo "--seed 6 --pools 600 --hot 150 --noise 40 --watched-logs 12000 --logs-per-block 300 --sparse 4000" ;;
    *) echo "devnet: unknown preset '$1' (small, large, dense, mainnet-shape, mainnet-shape-mini)" >&2; exit 2 ;;
  esac
}

# Chain rules per preset. The mainnet-shaped chains are Cancun: under Prague every block writes
# a slot of the history contract, and anvil hashes its whole state again for each block it
# mines, so empty blocks get slower as the chain grows (1,000 took 0.5 s at block 0 and 5.8 s
# at block 5,000 here; 0.03 s under Cancun), which puts 100,000 of them out of reach.
chain_flags() {
  case "$1" in
    mainnet-shape*) echo "--hardfork cancun" ;;
    *) echo "" ;;
  esac
}

generator() {
  case "$1" in
    mainnet-shape*) echo "$TIDEWATER_SCRIPTS/devnet/mainnet_shape.mjs" ;;
    *) echo "$TIDEWATER_SCRIPTS/devnet/traffic.mjs" ;;
  esac
}

chain_dir() {
  local name="$1"; shift
  local flags="$*"
  local key
  key=$(cat "$(generator "$name")" <(echo "$flags" "${ANVIL_FLAGS[*]}" $(chain_flags "$name")) | sha256sum | cut -c1-12)
  echo "$TIDEWATER_HOME/devnet/$name-$key"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build)
    name="${1:?devnet build NAME}"; shift
    flags="$(preset_flags "$name") $*"
    dir=$(chain_dir "$name" $flags)
    if [ -f "$dir/state.json" ] && [ -f "$dir/deploy.json" ]; then echo "$dir"; exit 0; fi
    mkdir -p "$dir"
    port=$(free_port)
    build_flags=("${RUNTIME_FLAGS[@]}")
    # Thousands of pools: a copy of the state per block would take tens of GB in memory.
    case "$name" in mainnet-shape*) build_flags=(--prune-history) ;; esac
    chain_flags "$name" > "$dir/anvil.flags"
    "$TIDEWATER_ANVIL" "${ANVIL_FLAGS[@]}" $(chain_flags "$name") "${build_flags[@]}" --port "$port" --dump-state "$dir/state.json.tmp" &
    anvil_pid=$!
    trap 'kill $anvil_pid 2>/dev/null || true' EXIT
    wait_rpc "http://127.0.0.1:$port"
    echo "devnet: building '$name' ($flags) into $dir" >&2
    node "$(generator "$name")" --rpc "http://127.0.0.1:$port" \
      --modules "$TIDEWATER_NODE_MODULES" --out "$dir/deploy.json.tmp" $flags >&2
    kill -INT $anvil_pid; wait $anvil_pid || true; trap - EXIT
    # anvil writes every transaction's call trace into the dump: most of a busy chain's bytes,
    # and more memory than the machine has when it loads the chain again. Only logs matter here.
    node "$TIDEWATER_SCRIPTS/devnet/strip_traces.mjs" "$dir/state.json.tmp" "$dir/state.json.stripped"
    rm "$dir/state.json.tmp"
    mv "$dir/deploy.json.tmp" "$dir/deploy.json"
    mv "$dir/state.json.stripped" "$dir/state.json"
    echo "$dir"
    ;;
  path)
    name="${1:?devnet path NAME}"; shift
    chain_dir "$name" $(preset_flags "$name") "$@"
    ;;
  start)
    name="${1:?devnet start NAME [PORT]}"
    port="${2:-8545}"
    dir=$(chain_dir "$name" $(preset_flags "$name"))
    test -f "$dir/state.json" || { echo "devnet: '$name' not built; run scripts/devnet.sh build $name" >&2; exit 1; }
    exec "$TIDEWATER_ANVIL" "${ANVIL_FLAGS[@]}" $(chain_flags "$name") "${RUNTIME_FLAGS[@]}" --port "$port" --load-state "$dir/state.json"
    ;;
  *)
    sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
