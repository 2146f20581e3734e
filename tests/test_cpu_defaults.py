"""The engine arguments the worker chooses on a machine with no GPU, and that a user's choice wins.
(Plans only: vLLM's argument parser is imported, no engine starts.)"""

from __future__ import annotations

import logging
import os

import pytest

from tpworker.config.settings import load_settings
from tpworker.startup.plan import plan_start

from conftest import ENGINE_ENV


def engine_args(models, **env: str) -> dict:
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so these are the no-GPU defaults on any machine.
    settings = load_settings(
        {**os.environ, **ENGINE_ENV, "MODEL_NAME": str(models[1]), "CUDA_VISIBLE_DEVICES": "", **env}
    )
    return plan_start(settings).engine_args


def test_no_gpu_and_no_dtype_runs_in_float32_and_says_why(models, caplog):
    with caplog.at_level(logging.INFO, logger="tpworker.startup.engine_args"):
        args = engine_args(models)
    assert args["dtype"] == "float32"
    assert "No GPU: running in float32, because bfloat16 kernels differ between CPUs" in caplog.text
    assert args["enforce_eager"] is True


@pytest.mark.parametrize("dtype", ["bfloat16", "auto", "float16"])
def test_a_users_dtype_is_kept(models, caplog, dtype):
    with caplog.at_level(logging.INFO, logger="tpworker.startup.engine_args"):
        args = engine_args(models, DTYPE=dtype)
    assert args["dtype"] == dtype
    assert "running in float32" not in caplog.text
