#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target for a bounded time each; exits non-zero when any
# target finds a crash (panic, sanitizer report, timeout or out-of-memory).
#
#   bash tests/scripts/fuzz.sh                 # every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=300 bash tests/scripts/fuzz.sh scrub client_hello
#   FUZZ_SECONDS=0 bash tests/scripts/fuzz.sh  # only replay the committed seed corpora
#   FUZZ_ARGS="-jobs=2 -workers=2" ...           # extra libFuzzer flags (override the defaults)
#
# Targets live in shared-proto/fuzz and host-broker/fuzz (each its own cargo workspace,
# excluded from the root one); seeds in <crate>/fuzz/corpus/<target>/seed-*. New inputs
# found during a run go to a scratch directory, not into the repository. A crashing input
# is kept under <crate>/fuzz/artifacts/<target>/; see docs/testing.md ("Fuzzing") for how
# to reproduce it and turn it into a test. Needs a nightly toolchain; installs cargo-fuzz
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
t0=$SECONDS
secs="${FUZZ_SECONDS:-20}"
# Both fuzz crates share one target dir (common dependencies), apart from the host builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/fuzz}"

# crate dir -> targets
declare -A targets=(
  [shared-proto]="frame_decode tunnel_chunks"
  [host-broker]="policy_parse client_hello scrub http_request"
)
order=(shared-proto host-broker)

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

wanted=("$@")
selected() {
  [ "${#wanted[@]}" -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
ran=0
for crate in "${order[@]}"; do
  todo=()
  for t in ${targets[$crate]}; do selected "$t" && todo+=("$t"); done
  [ "${#todo[@]}" -eq 0 ] && continue
  s=$SECONDS
  # cargo-fuzz has no --locked: check first that the committed Cargo.lock is complete, so a
  # fresh checkout builds exactly the locked versions (and a stale lock fails here).
  if ! cargo metadata --locked --format-version 1 --manifest-path "$crate/fuzz/Cargo.toml" \
      >/dev/null; then
    echo "fuzz: $crate/fuzz/Cargo.lock is out of date: run cargo metadata --manifest-path" \
         "$crate/fuzz/Cargo.toml --format-version 1 >/dev/null and commit the lock" >&2
    exit 1
  fi
  (cd "$crate" && cargo +nightly fuzz build)
  echo "fuzz: built $crate/fuzz in $((SECONDS - s))s" >&2
  for t in "${todo[@]}"; do
    mkdir -p "$scratch/$t"
    if [ "$secs" -gt 0 ]; then
      limit=(-max_total_time="$secs")
    else
      limit=(-runs=0)
    fi
    s=$SECONDS
    st=0
    (cd "$crate" && cargo +nightly fuzz run "$t" "$scratch/$t" "$root/$crate/fuzz/corpus/$t" -- \
      "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      -print_final_stats=1 ${FUZZ_ARGS:-}) >"$scratch/$t.log" 2>&1 || st=$?
    ran=$((ran + 1))
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || true)"
    if [ "$st" -ne 0 ]; then
      failed+=("$t")
      tail -n 60 "$scratch/$t.log" >&2
      echo "fuzz: $t FAILED (exit $st) after $((SECONDS - s))s; crashing input under $crate/fuzz/artifacts/$t/" >&2
      echo "fuzz:   reproduce: (cd $crate && cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>)" >&2
    else
      echo "fuzz: $t ok: ${execs:-?} inputs in $((SECONDS - s))s" >&2
    fi
  done
done

if [ "$ran" -eq 0 ]; then
  echo "fuzz: no such target: ${wanted[*]}" >&2
  exit 2
fi
echo "fuzz: $ran target(s) in $((SECONDS - t0))s" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
