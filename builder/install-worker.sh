#!/usr/bin/env bash
# Image build step: install the worker and runpod==1.10.0 into the base image's Python, keeping
# vLLM and its dependencies exactly as the base image ships them, then check what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 builder/vllm_constraints.py > /tmp/vllm-constraints.txt
echo "Holding $(wc -l < /tmp/vllm-constraints.txt) packages at the base image's versions."
# The official image installs its packages with uv into the system Python; do the same.
if command -v uv >/dev/null; then
  uv pip install --system --no-cache --constraint /tmp/vllm-constraints.txt -r builder/requirements.txt .
else
  python3 -m pip install --no-cache-dir --constraint /tmp/vllm-constraints.txt -r builder/requirements.txt .
fi
rm /tmp/vllm-constraints.txt

python3 - <<'PY'
from importlib import metadata

expected = {"vllm": "0.32.0", "runpod": "1.10.0"}
found = {name: metadata.version(name) for name in expected}
assert found == expected, f"installed {found}, expected {expected}"
import handler  # noqa: F401  (the entry point imports)
import tpworker.cli  # noqa: F401
print("Installed:", ", ".join(f"{k} {v}" for k, v in found.items()))
PY
