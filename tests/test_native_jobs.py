"""Native jobs through handler.handler on one real vLLM CPU engine (TP=1, float32: the default with no GPU,
so the exact answers asserted here hold on every CPU)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from conftest import RunningWorker, text_of

pytestmark = pytest.mark.engine

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 48}


@pytest.fixture(scope="module")
def worker(models):
    running = RunningWorker(TENSOR_PARALLEL_SIZE="1", MAX_N="4")
    yield running
    running.close()


@pytest.fixture(scope="module")
def tokenizer(models):
    return AutoTokenizer.from_pretrained(models[1])


def test_chat_answers_paris(worker):
    chunks = worker.job({"messages": CHAT, "sampling_params": GREEDY})
    assert len(chunks) == 1
    assert "Paris" in text_of(chunks)
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"


def test_streamed_chunks_join_to_the_unstreamed_text(worker):
    whole = worker.job({"messages": CHAT, "sampling_params": {**GREEDY, "max_tokens": 40, "ignore_eos": True}})
    streamed = worker.job(
        {"messages": CHAT, "stream": True, "sampling_params": {**GREEDY, "max_tokens": 40, "ignore_eos": True}}
    )
    assert len(streamed) > 1
    assert text_of(streamed) == text_of(whole)
    assert [c["choices"][0]["finish_reason"] for c in streamed[:-1]] == [None] * (len(streamed) - 1)
    assert streamed[-1]["choices"][0]["finish_reason"] == "length"
    counts = [c["usage"]["output"] for c in streamed]
    assert counts == sorted(counts) and counts[-1] == 40


def test_stream_batches_grow_from_min_to_max(worker):
    policy = {"min_batch_size": 2, "batch_size_growth_factor": 2, "max_batch_size": 8}
    chunks = worker.job(
        {
            "prompt": "Once upon a time",
            "stream": True,
            **policy,
            "sampling_params": {"temperature": 0, "max_tokens": 40, "ignore_eos": True},
        }
    )
    totals = [c["usage"]["output"] for c in chunks]
    sizes = [b - a for a, b in zip([0] + totals, totals, strict=False)]
    # The engine may deliver several tokens at once, so a chunk holds at least its target size.
    targets = [2, 4, 8, 8, 8, 8, 8]
    assert all(size >= target for size, target in zip(sizes[:-1], targets, strict=False))
    assert sum(sizes) == 40


def test_usage_counts_real_tokens(worker, tokenizer):
    chunks = worker.job({"messages": CHAT, "sampling_params": {"temperature": 0, "max_tokens": 17, "ignore_eos": True}})
    expected_input = len(
        tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    assert chunks[-1]["usage"] == {"input": expected_input, "output": 17}
    prompt = "The quick brown fox jumps over"
    chunks = worker.job({"prompt": prompt, "sampling_params": {"temperature": 0, "max_tokens": 5, "ignore_eos": True}})
    assert chunks[-1]["usage"] == {"input": len(tokenizer(prompt)["input_ids"]), "output": 5}


def test_n_returns_that_many_choices(worker):
    chunks = worker.job(
        {
            "prompt": "My favourite colour is",
            "stream": True,
            "sampling_params": {"n": 2, "temperature": 1.0, "seed": 5, "max_tokens": 12, "ignore_eos": True},
        }
    )
    assert all(len(c["choices"]) == 2 for c in chunks)
    assert all(text_of(chunks, i) for i in (0, 1))
    assert [chunks[-1]["choices"][i]["finish_reason"] for i in (0, 1)] == ["length", "length"]
    assert chunks[-1]["usage"]["output"] == 24


def test_stop_string_ends_the_text(worker):
    free = text_of(worker.job({"messages": CHAT, "sampling_params": GREEDY}))
    stop = "Paris"
    assert stop in free
    stopped = worker.job({"messages": CHAT, "sampling_params": {**GREEDY, "stop": [stop]}})
    assert text_of(stopped) == free[: free.index(stop)]
    assert stopped[-1]["choices"][0]["finish_reason"] == "stop"


def test_fixed_seed_repeats_and_other_seeds_differ(worker):
    def sample(seed):
        params = {"temperature": 1.0, "seed": seed, "max_tokens": 24, "ignore_eos": True}
        return text_of(worker.job({"prompt": "Write a word:", "sampling_params": params}))

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1


def test_logprobs_per_token(worker):
    chunks = worker.job(
        {
            "prompt": "One, two, three,",
            "stream": True,
            "sampling_params": {"temperature": 0, "max_tokens": 6, "logprobs": 3, "ignore_eos": True},
        }
    )
    entries = [e for c in chunks for e in c["choices"][0]["logprobs"]]
    assert len(entries) == 6
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert entry["top_logprobs"][0]["token_id"] == entry["token_id"]
    assert "".join(e["token"] for e in entries) == text_of(chunks)


BAD_JOBS = [
    # (job input, the field the error must name)
    (None, "input"),
    ("What is the capital of France?", "input"),
    ({}, "prompt"),
    ({"sampling_params": {"max_tokens": 5}}, "prompt"),
    ({"prompt": "hi", "messages": CHAT}, "messages"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "hi", "stream": "sometimes"}, "stream"),
    ({"prompt": "hi", "sampling_params": "hot"}, "sampling_params"),
    ({"prompt": "hi", "sampling_params": {"temprature": 0.5}}, "sampling_params.temprature"),
    ({"prompt": "hi", "sampling_params": {"best_of": 2}}, "sampling_params.best_of"),
    ({"prompt": "hi", "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
    ({"prompt": "hi", "sampling_params": {"top_p": 1.5}}, "sampling_params.top_p"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 0}}, "sampling_params.max_tokens"),
    ({"prompt": "hi", "sampling_params": {"n": "two"}}, "sampling_params.n"),
    ({"prompt": "hi", "sampling_params": {"n": 5}}, "sampling_params.n"),  # MAX_N=4
    ({"prompt": "hi", "sampling_params": {"logprobs": 500}}, "sampling_params.logprobs"),
    ({"prompt": "hi", "sampling_params": {"max_tokens": 5000}}, "sampling_params.max_tokens"),
    ({"prompt": "hello " * 3000}, "prompt"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"prompt": "hi", "max_batch_size": 0}, "max_batch_size"),
    ({"prompt": "hi", "sampling_param": {}}, "sampling_param"),
]


def test_each_bad_job_gets_one_error_naming_the_field_and_the_worker_keeps_serving(worker):
    for job_input, field in BAD_JOBS:
        chunks = worker.job(job_input)
        assert len(chunks) == 1, (job_input, chunks)
        error = chunks[0].get("error")
        assert error, (job_input, chunks)
        assert error["param"] == field, (job_input, error)
        assert error["code"] == 400 and error["type"] == "BadRequestError"
        assert field.split(".")[-1].split("[")[0] in error["message"], error
        assert "Traceback" not in error["message"]
    assert "Paris" in text_of(worker.job({"messages": CHAT, "sampling_params": GREEDY}))


def test_a_cancelled_job_aborts_its_engine_request(worker):
    import asyncio

    from tpworker import app

    import handler

    async def cancel_mid_stream():
        app.set_current_worker(worker.worker)
        # first chunk: 1 token; the second would hold 1000, so the job is mid-generation when cancelled
        job = {
            "id": "to-cancel",
            "input": {
                "prompt": "Tell a long story.",
                "stream": True,
                "min_batch_size": 1,
                "batch_size_growth_factor": 1000,
                "max_batch_size": 1000,
                "sampling_params": {"max_tokens": 1500, "ignore_eos": True},
            },
        }
        stream = handler.handler(job)
        await stream.__anext__()  # generation has started
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        task.cancel()  # what RunPod's job loop does when a job is stopped
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        for _ in range(50):
            if worker.engine.unfinished_requests() == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    assert worker.run(cancel_mid_stream())


def test_without_warm_up_the_openai_routes_are_built_once_the_worker_is_idle_after_the_job_loop_starts(worker):
    """RunPod's job loop calls loop_started when it starts (jobloop.install); with ENGINE_WARMUP=false the
    worker then builds vLLM's OpenAI serving layer (about a second, mostly holding the event loop) as soon
    as no job is in flight, so that neither a job waiting at start nor the first OpenAI job waits for it.
    (With the warm-up, the default, the layer is built during it, before the first job is taken.)"""
    import asyncio

    from tpworker import app
    from tpworker.serving.worker import OPENAI_WARMUP_DELAY_S

    import handler

    running = worker.worker
    assert running.openai._server is None, "no OpenAI job ran in this module before"
    default_settings = running.settings
    running.settings = default_settings.model_copy(update={"engine_warmup": False})
    job = {
        "id": "in-flight",
        "input": {
            "prompt": "Count to a hundred:",
            "stream": True,
            "sampling_params": {"max_tokens": 200, "ignore_eos": True},
        },
    }

    async def start_of_job_loop():
        app.set_current_worker(running)
        outputs = handler.handler(job)
        first = await anext(outputs)  # a job is in flight
        running.loop_started()
        concurrency = running.concurrency(1)
        await asyncio.sleep(OPENAI_WARMUP_DELAY_S + 0.5)
        built_while_busy = running.openai._server is not None
        await outputs.aclose()  # the job ends: the worker is idle
        await asyncio.wait_for(running._openai_build, 60)
        return first, concurrency, built_while_busy

    try:
        first, concurrency, built_while_busy = worker.run(start_of_job_loop())
    finally:
        running.settings = default_settings
    assert first["choices"][0]["tokens"] and concurrency == running.settings.max_concurrency
    assert not built_while_busy
    assert running.openai._server is not None
    models = worker.job({"openai_route": "/v1/models", "openai_input": {}})
    assert [m["id"] for m in models[0]["data"]] == list(worker.plan.engine_args["served_model_name"])


def test_the_warm_up_runs_a_chat_job_through_the_engine_and_leaves_nothing_behind(worker):
    """ENGINE_WARMUP (the default): before the job loop takes a job, one short chat job goes through the
    job path and the engine. It leaves no request in the engine and changes no later answer."""
    from tpworker import timeline

    before = worker.job({"messages": CHAT, "sampling_params": GREEDY})
    worker.run(worker.worker.warm_up())
    marks = [p for p in timeline.TIMELINE.phases() if p.phase == "warm-up request done"]
    assert marks and marks[-1].detail == "a chat job"  # the model has a chat template: the chat form ran
    assert worker.engine.unfinished_requests() == 0
    assert text_of(worker.job({"messages": CHAT, "sampling_params": GREEDY})) == text_of(before)
