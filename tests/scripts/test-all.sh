#!/usr/bin/env bash
# Runs every test: installs what the tests need (idempotent), then the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/bootstrap.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
