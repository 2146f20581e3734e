"""The planner's verdicts agree with what the real vLLM CPU engine does with the default model."""

from __future__ import annotations

import pytest

from tpworker.config.settings import load_settings
from tpworker.planning import hardware
from tpworker.planning.modelinfo import ModelFacts, read_model_config
from tpworker.planning.parallel import PlanError, valid_tp_sizes
from tpworker.planning.preflight import PreflightError
from tpworker.startup.model_and_layout import plan_layout
from tpworker.startup.plan import plan_start

from conftest import ENGINE_ENV, RunningWorker, text_of


@pytest.mark.engine
def test_tp4_on_the_padded_model_is_accepted_and_serves(models):
    assert 4 in valid_tp_sizes(ModelFacts.from_config(read_model_config(str(models[1]))))
    worker = RunningWorker(TENSOR_PARALLEL_SIZE="4")
    try:
        assert worker.engine.tensor_parallel_size == 4
        # 4 ranks on 2 cores run unbound (slow), so keep it short
        chunks = worker.job(
            {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 4}}
        )
    finally:
        worker.close()
    assert "Paris" in text_of(chunks)


def test_tp2_on_the_unpadded_model_is_refused_before_vllm_and_by_vllm(models):
    settings = load_settings({"MODEL_NAME": str(models[0]), "TENSOR_PARALLEL_SIZE": "2"})
    with pytest.raises(PlanError, match="9 attention heads do not divide by 2"):
        plan_layout(settings)
    # vLLM's own configuration check agrees (it runs after seconds of imports, before loading)
    from vllm import AsyncEngineArgs

    with pytest.raises(Exception, match="divisible"):
        AsyncEngineArgs(model=str(models[0]), tensor_parallel_size=2).create_engine_config()


def test_preflight_refuses_a_gpu_too_small_for_the_weights(models, monkeypatch):
    # A test double for a GPU: 100 MiB of memory, which cannot hold the 0.29 GB of weights.
    monkeypatch.setattr(hardware, "visible_gpus", lambda *_: [hardware.Gpu(0, "Fake GPU", 100 * 2**20)])
    settings = load_settings({**ENGINE_ENV, "MODEL_NAME": str(models[1])})
    layout = plan_layout(settings)
    assert layout.parallel.tensor_parallel_size == 1
    with pytest.raises(PreflightError, match="more than the"):
        plan_start(settings, layout)


def test_auto_on_simulated_gpus_uses_the_largest_valid_size(models, monkeypatch):
    monkeypatch.setattr(
        hardware, "visible_gpus", lambda *_: [hardware.Gpu(i, "Fake GPU", 80 * 2**30) for i in range(3)]
    )
    settings = load_settings({"MODEL_NAME": str(models[1])})
    layout = plan_layout(settings)
    assert layout.parallel.tensor_parallel_size == 2 and "1 GPU(s) per stage stay idle" in layout.parallel.warning
