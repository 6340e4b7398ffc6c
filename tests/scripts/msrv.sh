#!/usr/bin/env bash
# Checks that the workspace's `rust-version` (root Cargo.toml) is true (docs/testing.md,
# "Minimum Rust version"):
#   1. every workspace member inherits it (`rust-version.workspace = true`), so cargo and
#      clippy's `incompatible_msrv` lint (run by the clippy step with -D warnings) see it;
#   2. no `allow(clippy::incompatible_msrv)` anywhere;
#   3. no locked dependency (Linux target) declares a newer `rust-version`;
#   4. when that toolchain is installed (bootstrap installs it), the whole workspace builds
#      with it: `cargo +<rust-version> check --workspace --all-targets --locked`. With
#      CI=true a missing toolchain is an error, otherwise a notice.
# Exits non-zero naming what is wrong.
set -euo pipefail
cd "$(dirname "$0")/../.."

msrv="$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)"
[ -n "$msrv" ] || { echo "msrv: no rust-version in [workspace.package]" >&2; exit 1; }
fail=0

meta="$(mktemp)"
trap 'rm -f "$meta"' EXIT
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu >"$meta"

python3 - "$meta" "$msrv" <<'EOF' || fail=1
import json, sys
meta = json.load(open(sys.argv[1]))
msrv = sys.argv[2]
def key(v):
    t = [int(x) for x in v.split(".")]
    return tuple(t + [0] * (3 - len(t)))
members = set(meta["workspace_members"])
bad_members, newer = [], []
for p in meta["packages"]:
    rv = p.get("rust_version")
    if p["id"] in members:
        if rv is None or key(rv) != key(msrv):
            bad_members.append(f"{p['name']} (rust-version {rv})")
    elif rv is not None and key(rv) > key(msrv):
        newer.append(f"{p['name']} {p['version']} (rust-version {rv})")
if bad_members:
    print(f"msrv: workspace members without rust-version {msrv} "
          f"(add `rust-version.workspace = true`): {', '.join(bad_members)}", file=sys.stderr)
if newer:
    print(f"msrv: dependencies needing a newer Rust than {msrv}: {', '.join(sorted(newer))}",
          file=sys.stderr)
top = max((p.get("rust_version") or "0" for p in meta["packages"] if p["id"] not in members),
          key=key)
print(f"msrv: rust-version {msrv}; newest declared by a dependency: {top}", file=sys.stderr)
sys.exit(1 if bad_members or newer else 0)
EOF

if grep -rn --include='*.rs' --include='*.toml' 'incompatible_msrv' \
    Cargo.toml shared-proto guest-agent host-broker initrd tests 2>/dev/null \
    | grep -v '/target/' | grep -v '^tests/scripts/'; then
  echo "msrv: clippy::incompatible_msrv must not be allowed (above)" >&2
  fail=1
fi

if cargo "+$msrv" --version >/dev/null 2>&1; then
  s=$SECONDS
  # Same target dir as the other builds: artifacts of another rustc get their own hashes.
  if cargo "+$msrv" check --workspace --all-targets --locked --quiet; then
    echo "msrv: cargo +$msrv check --workspace --all-targets ok ($((SECONDS - s))s)" >&2
  else
    echo "msrv: the workspace does not build with Rust $msrv (above)" >&2
    fail=1
  fi
elif [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
  echo "msrv: CI=true but toolchain $msrv is not installed (tests/scripts/bootstrap.sh installs it)" >&2
  fail=1
else
  echo "msrv: toolchain $msrv not installed; skipped the real build (rustup toolchain install $msrv --profile minimal)" >&2
fi
exit "$fail"
