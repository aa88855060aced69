#!/usr/bin/env bash
# Packages a release: dist/tidewater-<version>-x86_64-linux/ with
#   bin/tidewater          stripped of debug info (symbols kept: backtraces name functions)
#   lib/libduckdb.so       the DuckDB library the binary links (found through $ORIGIN/../lib)
#   debug/tidewater.debug  the split debug info (line tables), linked by .gnu_debuglink, so
#                          gdb/addr2line resolve a crash address to file:line when it is beside
#                          the binary or under /usr/lib/debug
# and a .tar.gz of it. Prints the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install.sh >/dev/null
cargo build --release -q -p tidewater
version=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tidewater"))')
name="tidewater-$version-x86_64-linux"
out="dist/$name"
rm -rf "$out"; mkdir -p "$out/bin" "$out/lib" "$out/debug"
bin="$CARGO_TARGET_DIR/release/tidewater"
objcopy --only-keep-debug "$bin" "$out/debug/tidewater.debug"
objcopy --strip-debug --add-gnu-debuglink="$out/debug/tidewater.debug" "$bin" "$out/bin/tidewater"
cp "$DUCKDB_LIB_DIR/libduckdb.so" "$out/lib/"
# The packaged binary runs from anywhere with its lib/ beside it.
env -u LD_LIBRARY_PATH "$out/bin/tidewater" --version >/dev/null
tar -C dist -czf "dist/$name.tar.gz" "$name"
du -h "$bin" "$out/bin/tidewater" "$out/debug/tidewater.debug" "$out/lib/libduckdb.so" "dist/$name.tar.gz"
