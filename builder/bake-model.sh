#!/usr/bin/env bash
# Image build step: bake MODEL_NAME's weights into the folder of MODEL_MANIFEST with
# `tpworker download`, and LORA_MODULES' hub adapters beside them with `tpworker download-adapters`.
# With MODEL_NAME empty no model is baked: the worker finds its model at start (network volume cache,
# or a download), see the README; likewise for adapters with LORA_MODULES empty.
# The Hugging Face token comes only from the BuildKit secret HF_TOKEN, read here into this one
# process's environment: never an ARG or ENV, never written to a layer, never printed.
set -euo pipefail

if [[ -z "${MODEL_NAME:-}" && -z "${LORA_MODULES:-}" ]]; then
  echo "MODEL_NAME and LORA_MODULES are empty: nothing baked into the image."
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

if [[ -n "${MODEL_NAME:-}" ]]; then
  # Empty values (unset build arguments) are ignored by `tpworker download`.
  tpworker download "$MODEL_NAME" \
    --revision "${MODEL_REVISION:-}" \
    --tokenizer "${TOKENIZER_NAME:-}" \
    --tokenizer-revision "${TOKENIZER_REVISION:-}" \
    --manifest "$MODEL_MANIFEST"
else
  echo "MODEL_NAME is empty: no model baked into the image."
fi
if [[ -n "${LORA_MODULES:-}" ]]; then
  # Reads LORA_MODULES (set from the build argument) as the worker will at start.
  tpworker download-adapters
fi
