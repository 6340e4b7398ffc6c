#!/usr/bin/env bash
# The README's demo: installs what it needs (idempotent), builds, starts the broker and a local
# HTTPS upstream in-process, boots one VM whose workload calls the upstream with a placeholder,
# and prints what the guest sent and what the upstream received.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/bootstrap.sh
cargo build --release --target x86_64-unknown-linux-musl -p guest-agent -p sluice-probe
RUST_LOG="${RUST_LOG:-warn}" cargo run -q -p sluice-e2e --bin sluice-demo
