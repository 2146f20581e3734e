"""TP=2 computes what TP=1 computes, on the real vLLM CPU engine, through handler.handler.

float32: identical greedy token ids, and the chat question's real answer. bfloat16: the ranks sum in a
different order, and the kernels differ between CPUs (README, "Known issues"), so sequences may part ways;
where they first differ, each side's token must be among the other side's 5 most likely. bfloat16 is never
held to an exact answer."""

from __future__ import annotations

import pytest

from conftest import RunningWorker, text_of, token_ids_of

pytestmark = pytest.mark.engine

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "To bake bread you need flour,",
]
TOKENS = 32


CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "stream": True,
    "sampling_params": {"temperature": 0, "max_tokens": 24, "logprobs": 5},
}


def greedy_runs(tp: int, dtype: str, **env: str) -> dict:
    """Chunks of each prompt (greedy, with top-5 logprobs) and of the chat question."""
    worker = RunningWorker(TENSOR_PARALLEL_SIZE=str(tp), DTYPE=dtype, **env)
    try:
        assert worker.engine.tensor_parallel_size == tp
        params = {"temperature": 0, "max_tokens": TOKENS, "ignore_eos": True, "logprobs": 5}
        prompts = [worker.job({"prompt": p, "stream": True, "sampling_params": params}) for p in PROMPTS]
        # the modeling class vLLM resolved the architecture to (LlamaForCausalLM, or the Transformers backend's)
        architecture = worker.engine.llm.model_config.architecture
        return {"prompts": prompts, "chat": worker.job(CHAT), "architecture": architecture}
    finally:
        worker.close()


@pytest.fixture(scope="module")
def float32_runs(models):
    return {tp: greedy_runs(tp, "float32") for tp in (1, 2)}


@pytest.fixture(scope="module")
def bfloat16_runs(models):
    return {tp: greedy_runs(tp, "bfloat16") for tp in (1, 2)}


def test_tp2_float32_greedy_equals_tp1_token_for_token(float32_runs):
    for tp1, tp2 in zip(float32_runs[1]["prompts"], float32_runs[2]["prompts"], strict=True):
        ids = token_ids_of(tp1)
        assert len(ids) == TOKENS
        assert token_ids_of(tp2) == ids
        assert text_of(tp2) == text_of(tp1)


def top5(chunks: list[dict]) -> list[set[int]]:
    return [{t["token_id"] for t in e["top_logprobs"]} for c in chunks for e in c["choices"][0]["logprobs"]]


def assert_agree_within_top5(a_chunks: list[dict], b_chunks: list[dict]) -> None:
    """Greedy runs agree until they first differ; there each side's token is in the other's top 5."""
    a, b = token_ids_of(a_chunks), token_ids_of(b_chunks)
    first_difference = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first_difference is None:
        return
    i = first_difference
    assert a[i] in top5(b_chunks)[i] and b[i] in top5(a_chunks)[i], (i, a, b)


def test_transformers_own_tp_plan_at_tp2_computes_what_vllms_implementation_computes(float32_runs):
    """MODEL_IMPL=transformers: vLLM's Transformers modeling backend, which splits the model by
    transformers' base_model_tp_plan (colwise q/k/v/gate/up, rowwise o/down): the same greedy float32
    tokens as vLLM's own Llama implementation at TP=2, and the chat question's answer."""
    runs = greedy_runs(2, "float32", MODEL_IMPL="transformers")
    assert runs["architecture"].startswith("Transformers") and float32_runs[2]["architecture"] == "LlamaForCausalLM"
    for native, transformers_backend in zip(float32_runs[2]["prompts"], runs["prompts"], strict=True):
        assert token_ids_of(transformers_backend) == token_ids_of(native)
    assert "Paris" in text_of(runs["chat"]) and text_of(runs["chat"]) == text_of(float32_runs[2]["chat"])


def test_tp2_bfloat16_agrees_with_tp1_within_top5(bfloat16_runs):
    for tp1, tp2 in zip(bfloat16_runs[1]["prompts"], bfloat16_runs[2]["prompts"], strict=True):
        assert len(token_ids_of(tp1)) == len(token_ids_of(tp2)) == TOKENS
        assert_agree_within_top5(tp1, tp2)


def test_tp1_and_tp2_answer_the_chat_question_streamed_in_float32(float32_runs):
    for tp in (1, 2):
        chunks = float32_runs[tp]["chat"]
        assert len(chunks) > 1
        assert "Paris" in text_of(chunks)


def test_bfloat16_chat_agrees_with_float32_within_top5(bfloat16_runs, float32_runs):
    """On some CPUs bfloat16 answers "L'Étoile, ..." where float32 answers "The capital of France is
    Paris.": the first token is a near tie. That is allowed; a token float32 finds unlikely is not."""
    for tp in (1, 2):
        assert_agree_within_top5(bfloat16_runs[tp]["chat"], float32_runs[tp]["chat"])
