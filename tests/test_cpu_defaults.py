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


def test_a_long_prompt_is_prefilled_in_small_steps_unless_the_user_chose(models):
    from tpworker.config.variables import CPU_LONG_PREFILL_TOKENS

    assert engine_args(models)["long_prefill_token_threshold"] == CPU_LONG_PREFILL_TOKENS
    assert engine_args(models, LONG_PREFILL_TOKEN_THRESHOLD="0")["long_prefill_token_threshold"] == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "auto", "float16"])
def test_a_users_dtype_is_kept(models, caplog, dtype):
    with caplog.at_level(logging.INFO, logger="tpworker.startup.engine_args"):
        args = engine_args(models, DTYPE=dtype)
    assert args["dtype"] == dtype
    assert "running in float32" not in caplog.text


def test_the_transformers_backend_is_refused_at_tp2_for_an_architecture_without_a_tp_plan(models, tmp_path):
    """MODEL_IMPL=transformers splits by transformers' base_model_tp_plan: Llama has one (the plan
    goes through), OPT has none (refused before vLLM starts, naming the variables to change)."""
    import json

    from tpworker.startup.model_and_layout import StartError

    args = engine_args(models, MODEL_IMPL="transformers", TENSOR_PARALLEL_SIZE="2")
    assert args["model_impl"] == "transformers" and args["tensor_parallel_size"] == 2
    config = json.loads((models[1] / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "model_type": "opt", "architectures": ["OPTForCausalLM"]})
    )
    with pytest.raises(
        StartError, match=r"MODEL_IMPL=transformers at TENSOR_PARALLEL_SIZE=2: .* opt models"
    ) as refused:
        plan_start(
            load_settings(
                {
                    **ENGINE_ENV,
                    "MODEL_NAME": str(tmp_path),
                    "CUDA_VISIBLE_DEVICES": "",
                    "MODEL_IMPL": "transformers",
                    "TENSOR_PARALLEL_SIZE": "2",
                }
            )
        )
    assert "MODEL_IMPL=auto" in str(refused.value) and "TENSOR_PARALLEL_SIZE=1" in str(refused.value)
    assert engine_args(models, MODEL_IMPL="transformers")["model_impl"] == "transformers"  # TP=1 needs no plan


def test_the_transformers_backend_rule():
    from tpworker.planning.preflight import transformers_backend_problem

    assert transformers_backend_problem("opt", 2, {}) is not None
    assert transformers_backend_problem("opt", 1, {}) is None
    assert transformers_backend_problem("llama", 4, {"layers.*.self_attn.q_proj": "colwise"}) is None
    assert transformers_backend_problem("my-remote-code-model", 2, None) is None  # its own config may bring a plan
