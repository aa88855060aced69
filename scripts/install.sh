#!/usr/bin/env bash
# Installs everything Tidewater's build, devnet and tests need, idempotently:
# npm packages (anvil, Uniswap V3/V2 artifacts, ethers, prebuilt libduckdb) into
# $TIDEWATER_HOME/tools, cryo from PyPI, cargo-nextest if missing.
set -euo pipefail
source "$(dirname "$0")/env.sh"

NPM_PACKAGES=(
  "@foundry-rs/anvil-linux-amd64@1.7.1"
  "@uniswap/v3-core@1.0.1"
  "@uniswap/v3-periphery@1.4.4"
  "@uniswap/v2-core@1.0.1"
  "@uniswap/v2-periphery@1.1.0-beta.0"
  "ethers@6.17.0"
  "@duckdb/node-bindings-linux-x64@1.5.6-r.1"
)
stamp="$TIDEWATER_TOOLS/.installed"
want="${NPM_PACKAGES[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "install: npm packages into $TIDEWATER_TOOLS" >&2
  mkdir -p "$TIDEWATER_TOOLS"
  npm install --silent --no-save --no-package-lock --prefix "$TIDEWATER_TOOLS" "${NPM_PACKAGES[@]}" >&2
  echo "$want" > "$stamp"
fi
test -x "$TIDEWATER_ANVIL" || { echo "install: anvil missing at $TIDEWATER_ANVIL" >&2; exit 1; }
test -f "$DUCKDB_LIB_DIR/libduckdb.so" || { echo "install: libduckdb.so missing" >&2; exit 1; }

if ! python3 -c "import cryo" 2>/dev/null; then
  echo "install: cryo from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check cryo==0.3.2 pyarrow >&2
fi
if ! python3 -c "import moto.server" 2>/dev/null; then
  echo "install: moto[server] from PyPI (an S3 server with conditional writes)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5' >&2
fi
# Garage: an S3 server without conditional writes, built once into TIDEWATER_HOME (~7 min).
# Only the tests need it: the demo skips it (TIDEWATER_SKIP_GARAGE=1).
if [ ! -x "$TIDEWATER_GARAGE" ] && [ "${TIDEWATER_SKIP_GARAGE:-0}" != 1 ]; then
  echo "install: garage 2.5.0 from crates.io into $TIDEWATER_TOOLS/garage (about 7 minutes)" >&2
  CARGO_TARGET_DIR="$TIDEWATER_HOME/garage-target" cargo install --locked --quiet \
    --root "$TIDEWATER_TOOLS/garage" garage@2.5.0 >&2
  rm -rf "$TIDEWATER_HOME/garage-target"
fi
if ! python3 -c "import pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pyarrow >&2
fi
# Debian packages the tests start for real: socat terminates TLS in front of anvil for the
# wss:// test (openssl makes its certificates); Prometheus (with promtool) and Alertmanager
# fire the alert rules against a live run.
# Chromium and its WebDriver drive the liquidity page in a real browser.
# nats-server (JetStream) is the broker `run --publish` feeds.
for pair in socat:socat openssl:openssl promtool:prometheus prometheus:prometheus \
  prometheus-alertmanager:prometheus-alertmanager chromium:chromium chromedriver:chromium-driver \
  nats-server:nats-server etcd:etcd-server; do
  tool="${pair%%:*}" pkg="${pair##*:}"
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install: $pkg (Debian)" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" \
      || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg")) >&2
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install: cargo-nextest" >&2
  cargo install --locked cargo-nextest >&2
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "install: cargo-deny" >&2
  cargo install --locked cargo-deny >&2
fi
