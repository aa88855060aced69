#!/usr/bin/env python3
"""Fails when a crate depends on a crate of the workspace it must not (STYLE.md: dependencies
point downward; backfill and tail never depend on each other, nor state and queries; the API
knows no pipeline; only node and cli see everything), or when a workspace crate is missing
from the graph."""
import json, subprocess, sys

# The crate graph (docs/design/README.md): each crate may depend only on those listed.
P, C, S = "tidewater-primitives", "tidewater-chain", "tidewater-storage"
ALLOWED = {
    P: set(),
    # Test and benchmark support (the provider simulator): talks JSON-RPC, knows no crate.
    "tidewater-testkit": set(),
    C: {P},
    S: {P, C},
    "tidewater-backfill": {P, C, S},
    "tidewater-tail": {P, C, S},
    "tidewater-state": {P, C, S},
    "tidewater-queries": {P, C, S},
    "tidewater-api": {P, C, S, "tidewater-state", "tidewater-queries"},
    # Publishing to a broker: reads the live state, writes its checkpoint beside the dataset.
    "tidewater-publish": {P, C, S, "tidewater-state"},
    "tidewater-node": {P, C, S, "tidewater-backfill", "tidewater-tail", "tidewater-state",
                       "tidewater-queries", "tidewater-api", "tidewater-publish"},
    "tidewater": {P, C, S, "tidewater-backfill", "tidewater-tail", "tidewater-state",
                  "tidewater-queries", "tidewater-api", "tidewater-node", "tidewater-publish"},
}
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"]))
bad = []
for pkg in meta["packages"]:
    name = pkg["name"]
    if name not in ALLOWED:
        bad.append(f"{name} is not in the crate graph of check-deps.py")
    for dep in pkg["dependencies"]:
        if dep["name"].startswith("tidewater") and dep["kind"] is None:
            if dep["name"] not in ALLOWED.get(name, set()):
                bad.append(f"{name} -> {dep['name']}")
# One Arrow across the tree (DataFusion, DuckDB's arrow and ours must agree).
full = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"]))
for name in ("arrow", "arrow-array", "arrow-schema", "parquet", "datafusion"):
    versions = sorted({p["version"] for p in full["packages"] if p["name"] == name})
    if len(versions) > 1:
        bad.append(f"{name} in {len(versions)} versions: {', '.join(versions)}")
if bad:
    print("forbidden crate dependencies:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("crate graph ok")
