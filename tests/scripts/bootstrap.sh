#!/usr/bin/env bash
# Installs what Sluice's build and tests need on a fresh Debian machine. Idempotent: every
# step checks whether its result is already there and is skipped (in well under a second)
# when it is. Each step's duration is printed so a fresh-machine run can be profiled.
#
# Cache dir (kernel, rootfs image): ${SLUICE_CACHE_DIR:-/var/cache/sluice}. It survives
# between runs; the tests read the same variable.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here="$(cd "$(dirname "$0")" && pwd)"
cache="${SLUICE_CACHE_DIR:-/var/cache/sluice}"
mkdir -p "$cache"

step() {
  local name="$1"; shift
  local t0=$SECONDS
  "$@"
  echo "bootstrap: step '$name' took $((SECONDS - t0))s" >&2
}

apt_packages() {
  local need=()
  # qemu-system-x86: the VMM; mmdebstrap + e2fsprogs: the Debian root image; cpio, kmod:
  # initrd inspection and module info; openssl: CA checks in tests; musl-tools: musl-gcc for
  # ring's C parts in the static test client (tests/probe).
  for pkg in curl ca-certificates cpio kmod openssl python3 qemu-system-x86 mmdebstrap \
             e2fsprogs musl-tools; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  # golang-go: the static Go client of the VM trust matrix (tests/guest/goget) is built on
  # the host.
  command -v go >/dev/null 2>&1 || need+=(golang-go)
  # keytool: the guest agent's JKS test checks the stores it writes with the JDK's own tool.
  command -v keytool >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}

musl_target() {
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
}

vhost_vsock() {
  # The vhost-user vsock backend QEMU uses; it speaks the hybrid-vsock Unix socket contract.
  command -v vhost-device-vsock >/dev/null 2>&1 \
    || cargo install --locked vhost-device-vsock
}

guest_kernel() {
  # Debian's cloud kernel, downloaded and unpacked (never installed on the host).
  local pkg
  pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-/{print $2; exit}')"
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')"
  fi
  [ -n "$pkg" ] || { echo "bootstrap: cannot resolve linux-image-cloud-amd64" >&2; return 1; }
  local dir="$cache/kernel/$pkg"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir"
    # As root, apt downloads as the _apt user, which cannot write into the cache dir.
    (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" \
      && dpkg -x ./*.deb root && rm -f ./*.deb)
    touch "$dir/.done"
  fi
  local vmlinuz modules
  vmlinuz="$(ls "$dir"/root/boot/vmlinuz-* | head -n1)"
  modules="$(ls -d "$dir"/root/lib/modules/* | head -n1)"
  ln -sfn "$vmlinuz" "$cache/vmlinuz"
  ln -sfn "$modules" "$cache/modules"
}

ci() { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; }

nightly_toolchain() {
  # The fuzz step (tests/scripts/fuzz.sh): cargo-fuzz needs nightly (sanitizer flags). CI
  # machines come with one; a CI run without it fails here instead of later in the fuzz step.
  cargo +nightly --version >/dev/null 2>&1 && return 0
  if ci; then
    echo "bootstrap: CI=true but no nightly toolchain (rustup toolchain list); the fuzz step" \
         "needs it: rustup toolchain install nightly --profile minimal" >&2
    return 1
  fi
  rustup toolchain install nightly --profile minimal
}

cargo_fuzz() {
  cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
}

msrv_toolchain() {
  # The workspace's rust-version, for the real build of tests/scripts/msrv.sh.
  local v
  v="$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version *= *"\([0-9.]*\)".*/\1/p' \
       "$here/../../Cargo.toml")"
  [ -n "$v" ] || { echo "bootstrap: no rust-version in Cargo.toml" >&2; return 1; }
  cargo "+$v" --version >/dev/null 2>&1 || rustup toolchain install "$v" --profile minimal
}

rootfs() {
  bash "$here/build-rootfs.sh" "$cache"
}

total0=$SECONDS
step apt-packages apt_packages
step musl-target musl_target
step vhost-device-vsock vhost_vsock
step nightly-toolchain nightly_toolchain
step cargo-fuzz cargo_fuzz
step msrv-toolchain msrv_toolchain
step guest-kernel guest_kernel
step rootfs rootfs
echo "bootstrap: done in $((SECONDS - total0))s (cache: $cache)" >&2
