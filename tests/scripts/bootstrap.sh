#!/usr/bin/env bash
# Installs what Sluice's build and tests need on a fresh Debian machine. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
for pkg in curl cpio kmod openssl python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
