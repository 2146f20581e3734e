"""PP=2 computes what TP=1 computes, on the real vLLM CPU engine, through handler.handler.

Two pipeline stages on this machine (DISTRIBUTED_EXECUTOR_BACKEND unset: vLLM's processes, one
per stage, the default model's 30 layers split 15 + 15). float32, greedy: identical token ids.
vLLM's CPU build cannot run PP in eager mode (see startup.cpu_pipeline_defaults), so the worker
traces the model once with torch's eager backend; these tests are what shows that gives the same
tokens as eager TP=1."""

from __future__ import annotations

import pytest
from test_tensor_parallel import CHAT, PROMPTS, TOKENS  # the same prompts as TP=2 against TP=1

from conftest import ENGINE_ENV, RunningWorker, text_of, token_ids_of

pytestmark = pytest.mark.engine


def greedy_runs(**env: str) -> dict:
    worker = RunningWorker(DTYPE="float32", **env)
    try:
        params = {"temperature": 0, "max_tokens": TOKENS, "ignore_eos": True, "logprobs": 1}
        return {
            "engine": (worker.engine.tensor_parallel_size, worker.engine.pipeline_parallel_size),
            "plan": worker.plan,
            "prompts": [worker.job({"prompt": p, "stream": True, "sampling_params": params}) for p in PROMPTS],
            "chat": worker.job(CHAT),
        }
    finally:
        worker.close()


@pytest.fixture(scope="module")
def runs(models):
    return {
        "tp1": greedy_runs(TENSOR_PARALLEL_SIZE="1"),
        "pp2": greedy_runs(TENSOR_PARALLEL_SIZE="1", PIPELINE_PARALLEL_SIZE="2"),
    }


def test_the_engine_runs_two_pipeline_stages_of_15_layers(runs):
    assert runs["pp2"]["engine"] == (1, 2)
    plan = runs["pp2"]["plan"]
    assert plan.parallel.layers_per_stage == (15, 15)
    assert plan.engine_args["pipeline_parallel_size"] == 2
    assert plan.engine_args["compilation_config"] == {"mode": 2, "backend": "eager"}
    assert "enforce_eager" not in plan.engine_args
    assert plan.environment["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"  # one core per stage


def test_pp2_float32_greedy_equals_tp1_token_for_token(runs):
    for tp1, pp2 in zip(runs["tp1"]["prompts"], runs["pp2"]["prompts"], strict=True):
        ids = token_ids_of(tp1)
        assert len(ids) == TOKENS
        assert token_ids_of(pp2) == ids
        assert text_of(pp2) == text_of(tp1)


def test_pp2_answers_the_chat_question_streamed(runs):
    chunks = runs["pp2"]["chat"]
    assert len(chunks) > 1 and "Paris" in text_of(chunks)
    assert text_of(chunks) == text_of(runs["tp1"]["chat"])


def test_pp_on_cpu_in_eager_mode_is_refused_before_loading(models):
    import os

    from tpworker.config.settings import load_settings
    from tpworker.startup.model_and_layout import StartError
    from tpworker.startup.plan import plan_start

    settings = load_settings({**os.environ, **ENGINE_ENV, "PIPELINE_PARALLEL_SIZE": "2", "ENFORCE_EAGER": "true"})
    with pytest.raises(StartError, match="PIPELINE_PARALLEL_SIZE>1 cannot run in eager mode on vLLM's CPU build"):
        plan_start(settings)
