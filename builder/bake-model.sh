#!/usr/bin/env bash
# Image build step: bake MODEL_NAME's weights into the folder of MODEL_MANIFEST with
# `tpworker download`. With MODEL_NAME empty nothing is baked: the worker finds its model at start
# (network volume cache, or a download), see the README.
# The Hugging Face token comes only from the BuildKit secret HF_TOKEN, read here into this one
# process's environment: never an ARG or ENV, never written to a layer, never printed.
set -euo pipefail

if [[ -z "${MODEL_NAME:-}" ]]; then
  echo "MODEL_NAME is empty: no model baked into the image."
  exit 0
fi
if [[ -s /run/secrets/HF_TOKEN ]]; then
  HF_TOKEN="$(< /run/secrets/HF_TOKEN)"
  export HF_TOKEN
fi
# An empty build argument means the hub itself (huggingface_hub would take "" as the address).
if [[ -z "${HF_ENDPOINT:-}" ]]; then
  unset HF_ENDPOINT
fi
# Caches the hub client keeps (e.g. Xet chunks) go to a scratch folder, not into the image.
HF_HOME="$(mktemp -d)"
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT

# Empty values (unset build arguments) are ignored by `tpworker download`.
tpworker download "$MODEL_NAME" \
  --revision "${MODEL_REVISION:-}" \
  --tokenizer "${TOKENIZER_NAME:-}" \
  --tokenizer-revision "${TOKENIZER_REVISION:-}" \
  --manifest "$MODEL_MANIFEST"
