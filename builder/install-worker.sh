#!/usr/bin/env bash
# Image build step: install the worker and runpod==1.10.0 into the base image's Python, keeping
# every package of the base (vLLM and what it runs with) exactly as it ships, then check what was installed.
# Usage: builder/install-worker.sh VLLM_VERSION (the Dockerfile's build argument)
set -euo pipefail
cd "$(dirname "$0")/.."

# Every package the base has stays at its version; what the worker adds comes at builder/requirements.lock's.
python3 builder/image_requirements.py builder/requirements.lock /tmp/base-constraints.txt /tmp/worker-requirements.txt
# The official image installs its packages with uv into the system Python; do the same.
if command -v uv >/dev/null; then
  uv pip install --system --no-cache --constraint /tmp/base-constraints.txt -r /tmp/worker-requirements.txt .
else
  python3 -m pip install --no-cache-dir --constraint /tmp/base-constraints.txt -r /tmp/worker-requirements.txt .
fi
rm /tmp/base-constraints.txt /tmp/worker-requirements.txt

# runpod at the lock's pin; vLLM at the release asked for, and supported (builder/check_install.py).
python3 builder/check_install.py "${1:?usage: install-worker.sh VLLM_VERSION}"
