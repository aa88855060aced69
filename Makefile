# One entry point for humans and CI (.ci/run calls `scripts/test.sh`, the same as `make test`).
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: demo test lint pr bench-backfill

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	$(ENV) cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings && python3 scripts/check-deps.py && cargo deny check licenses bans sources

pr: lint test
	$(ENV) RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

bench-backfill:
	scripts/bench-backfill.sh
