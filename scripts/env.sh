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
