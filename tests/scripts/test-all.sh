#!/usr/bin/env bash
# Runs every test: installs what the tests need (idempotent), checks formatting and lints,
# builds the static guest binaries, runs the whole workspace's tests, VM tests included, then
# every fuzz target for a bounded time (FUZZ_SECONDS each, default 25; the seeds are replayed
# first) and the minimum-Rust-version check (tests/scripts/msrv.sh). A failure of one of the
# last three steps does not skip the others; the script fails if any failed.
#
# With CI=true the VM tests fail (never skip) when no VM can be booted, and this script also
# checks that every VM test really ran to completion (each one records itself in a marker
# file, see tests/src/gate.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
step() {
  local name="$1"; shift
  local s=$SECONDS st=0
  "$@" || st=$?
  echo "test-all: step '$name' took $((SECONDS - s))s (exit $st)" >&2
  return "$st"
}

step bootstrap bash tests/scripts/bootstrap.sh
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
# The embeddable core alone (host-broker without its daemon layer, docs/architecture.md "Layers").
step core-only cargo clippy -p host-broker --no-default-features --lib --examples -- -D warnings
step guest-binaries cargo build --release --target x86_64-unknown-linux-musl \
  -p guest-agent -p sluice-probe

marker="$(mktemp)"
trap 'rm -f "$marker"' EXIT
export SLUICE_E2E_MARKER="$marker"
# --no-fail-fast: one failing crate must not hide the results (or the VM runs) of the others.
rc=0
step test cargo test --workspace --no-fail-fast || rc=$?

expected="$(grep -ho 'vm_test("[a-z0-9_]*")' tests/tests/*.rs | sort -u | wc -l)"
ran="$(sort -u "$marker" | wc -l)"
echo "test-all: VM tests completed: $ran of $expected" >&2

# After the tests, so a crash found here never hides their results (docs/testing.md,
# "Fuzzing"): a crash is a failure like a failing test.
fuzz_rc=0
step fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-25}" bash tests/scripts/fuzz.sh || fuzz_rc=$?
msrv_rc=0
step msrv bash tests/scripts/msrv.sh || msrv_rc=$?

if [ "$rc" -ne 0 ]; then
  echo "test-all: cargo test failed (exit $rc) after $((SECONDS - t0))s" >&2
  exit "$rc"
fi
if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
  if [ "$ran" -ne "$expected" ]; then
    echo "test-all: CI=true but only $ran of $expected VM tests ran to completion" >&2
    exit 1
  fi
fi
if [ "$fuzz_rc" -ne 0 ]; then
  echo "test-all: a fuzz target crashed (exit $fuzz_rc; see 'fuzz:' lines above)" >&2
  exit "$fuzz_rc"
fi
if [ "$msrv_rc" -ne 0 ]; then
  echo "test-all: the rust-version check failed (see 'msrv:' lines above)" >&2
  exit "$msrv_rc"
fi
echo "test-all: all done in $((SECONDS - t0))s" >&2
