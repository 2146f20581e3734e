#!/usr/bin/env bash
# What `make image-test` needs on the machine: root (buildah builds and runs the image with chroot
# isolation, no daemon), buildah, debootstrap (the CPU base's root filesystem), unshare and ip (a run with no
# network). Missing Debian packages are installed with apt-get.
set -euo pipefail
if [[ $(id -u) != 0 ]]; then
  echo "make image-test needs root: buildah builds and runs the image with chroot isolation (run it as root)." >&2
  exit 2
fi
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "make image-test needs ${missing[*]}: install them (this machine has no apt-get)." >&2
    exit 2
  fi
  echo "Installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
buildah --version
