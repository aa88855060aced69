#!/usr/bin/env bash
# The whole test suite on a fresh machine: install tools, build the cached devnet chain, check
# the crate graph, then unit, integration (real anvil + Uniswap V3) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

scripts/install.sh
# The target directory outlives checkouts (scripts/env.sh): every build leaves a new test
# binary (~0.5 GB each for the integration tests) and incremental caches behind. Drop those not
# touched for two days, so a machine that runs the suite every day does not fill its disk.
if [ -d "$CARGO_TARGET_DIR/debug" ]; then
  find "$CARGO_TARGET_DIR/debug/incremental" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} + 2>/dev/null || true
  find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable -mtime +1 \
    \( -name 'it-*' -o -name 'tidewater*' \) ! -name '*.so' -delete 2>/dev/null || true
fi
export TIDEWATER_DEVNET_SMALL="$(scripts/devnet.sh build small)"
export TIDEWATER_DEVNET_MAINNET_SHAPE_MINI="$(scripts/devnet.sh build mainnet-shape-mini)"

python3 scripts/check-deps.py
# Licenses, banned crates and sources (deny.toml). Advisories need the RustSec database from a
# git host these machines cannot reach: checked only when CARGO_DENY_ADVISORIES=1.
cargo deny --log-level error check licenses bans sources
if [ "${CARGO_DENY_ADVISORIES:-0}" = 1 ]; then cargo deny check advisories; fi
# The alert rules: valid, and their unit tests (promtool from Debian's prometheus package).
promtool check rules ops/prometheus/alerts.yml
(cd ops/prometheus && promtool test rules alerts_test.yml)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo nextest run --workspace --profile "$profile" --no-tests=fail
cargo test --workspace --doc --quiet
