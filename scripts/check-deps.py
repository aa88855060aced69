#!/usr/bin/env python3
"""Fails when a crate depends on a crate of the workspace it must not (STYLE.md: dependencies
point downward; backfill and tail never depend on each other; only cli depends on everything)."""
import json, subprocess, sys

ALLOWED = {
    "tidewater-chain": set(),
    "tidewater-storage": {"tidewater-chain"},
    "tidewater-backfill": {"tidewater-chain", "tidewater-storage"},
    "tidewater-tail": {"tidewater-chain", "tidewater-storage"},
    "tidewater-queries": {"tidewater-storage", "tidewater-chain"},
    "tidewater": {"tidewater-chain", "tidewater-storage", "tidewater-backfill", "tidewater-tail", "tidewater-queries"},
}
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"]))
bad = []
for pkg in meta["packages"]:
    name = pkg["name"]
    for dep in pkg["dependencies"]:
        if dep["name"].startswith("tidewater") and dep["kind"] is None:
            if dep["name"] not in ALLOWED.get(name, set()):
                bad.append(f"{name} -> {dep['name']}")
if bad:
    print("forbidden crate dependencies:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("crate graph ok")
