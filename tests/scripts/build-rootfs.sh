#!/usr/bin/env bash
# Builds the Debian bookworm root filesystem image the VM tests boot (the client matrix: curl,
# wget, git, python3-requests, python3-httpx, python3-boto3, awscli, nodejs,
# openjdk-17-jre-headless; systemd), as ext4, into CACHE/rootfs-<recipe>.ext4 and points
# CACHE/rootfs.ext4 at it.
#
# The recipe hash covers this script (package list included), so editing it rebuilds the
# image; otherwise the cached image is reused. VMs never write to it: the harness attaches
# it with QEMU's snapshot=on (or a read-only disk).
# /opt/venv is a real virtualenv holding httpx and certifi from PyPI (pinned wheels, fetched
# on the host at build time): certifi ships its own copy of the roots, so the tests can check
# the agent adds the VM CA to bundles it does not own.
set -euo pipefail
cache="${1:?usage: build-rootfs.sh CACHE_DIR}"
PACKAGES="curl,ca-certificates,python3,python3-requests,systemd,systemd-sysv,procps,nodejs,openjdk-17-jre-headless,wget,git,python3-httpx,python3-boto3,awscli"
# PyPI wheels for /opt/venv, pinned (all pure Python, no dependency resolution at build time).
WHEELS="httpx==0.27.2 certifi==2024.8.30 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 idna==3.20 sniffio==1.3.1 typing_extensions==4.16.0"
recipe="$(sha256sum "$0" | cut -c1-16)"
image="$cache/rootfs-$recipe.ext4"
if [ -f "$image" ]; then
  ln -sfn "$image" "$cache/rootfs.ext4"
  exit 0
fi
work="$(mktemp -d "$cache/rootfs-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The guest's apt sources are the host's own Debian sources (deb822 or one-line style), so
# the image comes from the same mirror the machine already uses.
sources=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
  if [ -s "$f" ] && grep -q '^[^#]' "$f"; then sources="$f"; break; fi
done
[ -n "$sources" ] || { echo "build-rootfs: no Debian apt sources on this host" >&2; exit 1; }
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --customize-hook='echo sluice-guest > "$1/etc/hostname"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  --customize-hook='chroot "$1" python3 -m venv --without-pip /opt/venv' \
  --customize-hook="python3 -m pip install --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform any --target \"\$1/opt/venv/lib/python3.11/site-packages\" $WHEELS" \
  bookworm "$work/root" "$sources" </dev/null
# Size: contents plus 30% and 64 MiB for the journal and the tests' scratch files.
kib="$(du -sk "$work/root" | cut -f1)"
size_mib=$(( kib * 13 / 10 / 1024 + 64 ))
mke2fs -q -t ext4 -L sluice-root -d "$work/root" "$work/img" "${size_mib}M"
mv "$work/img" "$image"
# Drop images of older recipes.
find "$cache" -maxdepth 1 -name 'rootfs-*.ext4' ! -name "rootfs-$recipe.ext4" -delete
ln -sfn "$image" "$cache/rootfs.ext4"
echo "build-rootfs: built $image (${size_mib} MiB)" >&2
