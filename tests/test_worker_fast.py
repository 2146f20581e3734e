"""The worker's job handling on a fake engine (tests/fake_engine.py), in milliseconds: batching, usage,
cancellation, error mapping, stopping jobs and SIGTERM's grace. The real-engine tests (test_native_jobs,
test_faults, test_dev_endpoint) prove the same paths on vLLM."""

from __future__ import annotations

import asyncio

import pytest
from fake_engine import FakeEngine, token_text

from tpworker.config.variables import WorkerSettings
from tpworker.serving.job_errors import JobError
from tpworker.serving.worker import ENGINE_STOPPED, build_worker


def make_worker(engine: FakeEngine | None = None, **settings):
    return build_worker(engine or FakeEngine(), WorkerSettings(**settings), "fake", ["fake"], {})


async def collect(worker, job_input, job_id="job") -> list[dict]:
    return [chunk async for chunk in worker.handle({"id": job_id, "input": job_input})]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def tokens_of(chunk: dict, choice: int = 0) -> list[str]:
    return chunk["choices"][choice]["tokens"]


def test_a_counted_stream_comes_in_growing_chunks_with_usage():
    worker = make_worker(stream_interval_ms=0)  # worker-vllm's counted chunks
    chunks = run(collect(worker, {"prompt": "abcd", "stream": True, "sampling_params": {"max_tokens": 20}}))
    assert [len(tokens_of(c)) for c in chunks] == [1, 3, 9, 7]  # MIN_BATCH_SIZE 1, x3, the rest
    assert "".join(t for c in chunks for t in tokens_of(c)) == "".join(token_text(0, k) for k in range(20))
    assert [c["usage"] for c in chunks] == [{"input": 4, "output": n} for n in (1, 4, 13, 20)]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]


def test_a_paced_stream_sends_the_first_token_alone_then_what_each_interval_made():
    """The default: a token every 10 ms, a chunk at most every 50 ms (STREAM_INTERVAL_MS)."""
    worker = make_worker(FakeEngine(token_delay=0.01))
    chunks = run(collect(worker, {"prompt": "abcd", "stream": True, "sampling_params": {"max_tokens": 30}}))
    sizes = [len(tokens_of(c)) for c in chunks]
    assert sizes[0] == 1 and sum(sizes) == 30 and max(sizes) > 1 and len(chunks) < 30
    assert "".join(t for c in chunks for t in tokens_of(c)) == "".join(token_text(0, k) for k in range(30))
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_a_job_not_streamed_is_one_chunk_per_choice_text():
    (chunk,) = run(collect(make_worker(), {"prompt": "ab", "sampling_params": {"max_tokens": 3, "n": 2}}))
    assert [tokens_of(chunk, i) for i in (0, 1)] == [[" w0 w1 w2"], [" c1w0 c1w1 c1w2"]]
    assert chunk["usage"] == {"input": 2, "output": 6}


def test_the_default_max_tokens_fits_the_context_and_the_limit():
    worker = make_worker(default_max_tokens=100, max_output_tokens=5)
    (chunk,) = run(collect(worker, {"prompt": "ab"}))
    assert chunk["usage"]["output"] == 5
    error = run(collect(worker, {"prompt": "ab", "sampling_params": {"max_tokens": 6}}))[0]["error"]
    assert error["param"] == "sampling_params.max_tokens" and "MAX_OUTPUT_TOKENS" in error["message"]
    error = run(collect(make_worker(max_prompt_tokens=3), {"prompt": "abcd"}))[0]["error"]
    assert error["param"] == "prompt" and "the prompt is 4 tokens" in error["message"]


def test_a_bad_job_is_refused_by_name_before_the_engine():
    engine = FakeEngine()
    worker = make_worker(engine)
    error = run(collect(worker, {"prompt": "x", "sampling_params": {"temprature": 1}}))[0]["error"]
    assert (error["code"], error["param"]) == (400, "sampling_params.temprature")
    error = run(collect(worker, {"prompt": "a\x07"}))[0]["error"]  # the tokenizer's refusal, by field
    assert (error["code"], error["param"]) == (400, "prompt") and "control character" in error["message"]
    assert engine.requests == {}


def test_an_engine_failure_mid_job_is_one_internal_error_and_the_worker_goes_on():
    engine = FakeEngine()
    engine.fail_after = 2
    worker = make_worker(engine)
    chunks = run(collect(worker, {"prompt": "ab", "stream": True, "sampling_params": {"max_tokens": 10}}))
    assert tokens_of(chunks[0]) == [" w0"]
    assert chunks[-1]["error"]["type"] == "InternalServerError" and chunks[-1]["error"]["code"] == 500
    assert "the fake engine failed" in chunks[-1]["error"]["message"]
    engine.fail_after = None
    assert run(collect(worker, {"prompt": "ab", "sampling_params": {"max_tokens": 2}}))[0]["usage"]["output"] == 2


def test_a_dead_engine_refuses_jobs_with_503():
    engine = FakeEngine()
    engine.dead = True
    error = run(collect(make_worker(engine), {"prompt": "ab"}))[0]["error"]
    assert (error["code"], error["message"]) == (503, ENGINE_STOPPED) and engine.requests == {}


def test_a_cancelled_job_aborts_its_engine_request():
    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine)

    async def cancel_mid_stream():
        # first chunk: 1 token; the second would hold 1000, so the job is mid-generation when cancelled
        job_input = {"prompt": "ab", "stream": True, "batch_size_growth_factor": 1000, "max_batch_size": 1000}
        stream = worker.handle({"id": "c", "input": job_input})
        await anext(stream)
        task = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        task.cancel()  # what RunPod's job loop does when a job is stopped
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        return worker.jobs_in_flight()

    assert run(cancel_mid_stream()) == 0
    assert list(engine.requests.values()) == ["aborted"]


def test_stop_jobs_ends_the_jobs_in_flight_and_refuses_new_ones():
    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine)

    async def scenario():
        jobs = [asyncio.ensure_future(collect(worker, {"prompt": "x", "stream": True}, f"j{i}")) for i in range(3)]
        while engine.unfinished_requests() < 3:
            await asyncio.sleep(0.01)
        worker.engine_failed("the engine core exited")  # what the watchdog does, from its thread
        ended = await asyncio.gather(*jobs)
        return ended, await collect(worker, {"prompt": "x"}, "after")

    ended, after = run(scenario())
    for chunks in ended:
        assert (
            chunks[-1]["error"]
            == JobError("the engine core exited", type="ServiceUnavailableError", code=503).to_output()["error"]
        )
    assert after[0]["error"]["message"] == "the engine core exited"
    assert set(engine.requests.values()) == {"aborted"}


def test_sigterm_gives_jobs_in_flight_their_grace_period_then_ends_them():
    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine, shutdown_grace_seconds=0.2)

    async def scenario():
        short = asyncio.ensure_future(collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 3}}, "short"))
        long = asyncio.ensure_future(collect(worker, {"prompt": "x", "stream": True}, "long"))
        while engine.unfinished_requests() < 2:
            await asyncio.sleep(0.01)
        worker.shutdown()  # SIGTERM
        return await short, await long

    short, long = run(scenario())
    assert short[0]["usage"]["output"] == 3  # finished within the grace period
    assert long[-1]["error"]["code"] == 503 and "SHUTDOWN_GRACE_SECONDS" in long[-1]["error"]["message"]


def test_the_concurrency_getter_has_no_side_effects():
    worker = make_worker(max_concurrency=7)
    assert worker.concurrency(3) == 7 and worker._loop is None and worker._openai_build is None


def test_openai_streams_are_batched_by_whole_events_with_the_same_growth():
    from tpworker.serving.batching import BatchPolicy
    from tpworker.serving.limits import Limits
    from tpworker.serving.openai_routes import OpenAIRoutes

    limits = Limits.from_settings(WorkerSettings())
    routes = OpenAIRoutes(FakeEngine(), "fake", ["fake"], {}, BatchPolicy(9, 1, 3), limits)

    async def events():
        for i in range(20):
            yield f'data: {{"i": {i}}}\n\n'
        yield "data: [DONE]\n\n"

    async def batches():
        return [batch async for batch in routes._batched(events())]

    batches = run(batches())
    assert [batch.count("\n\n") for batch in batches] == [1, 3, 9, 8]
    assert "".join(batches).endswith("data: [DONE]\n\n")


def test_a_grammar_that_does_not_compile_is_attributed_to_its_field_in_both_job_forms():
    from tpworker.serving.openai_routes import _located
    from tpworker.vllm_bridge.sampling import is_grammar_error

    for message in (
        "Grammar error: unexpected token",
        "Invalid grammar specification.",
        "Invalid JSON grammar specification.",
    ):
        assert is_grammar_error(message)
        assert _located(message, None, {"response_format": {}}) == (f"response_format: {message}", "response_format")
    assert not is_grammar_error("max_tokens must be at least 1")
    assert _located("--enable-auto-tool-choice requires --tool-call-parser", None, {}) == (
        "ENABLE_AUTO_TOOL_CHOICE requires TOOL_CALL_PARSER",
        None,
    )


def test_the_watchdog_ends_the_jobs_kills_the_engine_and_exits_when_a_rank_is_lost():
    from tpworker.serving.watchdog import EXIT_ENGINE_FAILED, Watchdog

    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine)
    exits = []

    async def scenario():
        job = asyncio.ensure_future(collect(worker, {"prompt": "x", "stream": True}))
        while not engine.unfinished_requests():
            await asyncio.sleep(0.01)
        watchdog = Watchdog(engine, worker, stall_timeout=60, exit=exits.append)
        watchdog.start()
        engine.processes_lost = ["VLLM::Worker_TP1 (pid 42)"]  # what a killed rank looks like
        chunks = await job
        await asyncio.to_thread(watchdog.join, 15)
        return chunks

    chunks = run(scenario())
    assert chunks[-1]["error"]["code"] == 503
    assert "VLLM::Worker_TP1 (pid 42) exited" in chunks[-1]["error"]["message"]
    assert engine.killed and exits == [EXIT_ENGINE_FAILED]


def test_the_warm_up_sends_one_chat_job_and_builds_the_openai_layer_before_the_first_job():
    from tpworker import timeline

    engine = FakeEngine()
    worker = make_worker(engine)
    built = []

    async def server():  # the fake engine has no OpenAI layer; record that the warm-up builds it
        built.append(True)

    worker.openai.server = server

    async def scenario():
        ready = worker.loop_started()
        assert worker.loop_started() is None  # the job loop starts once
        await ready
        return await collect(worker, {"prompt": "hi", "sampling_params": {"max_tokens": 2}})

    chunks = run(scenario())
    warmups = [rid for rid in engine.requests if rid.startswith("warm-up-")]
    assert len(warmups) == 1 and engine.requests[warmups[0]] == "finished"
    assert built == [True] and timeline.TIMELINE.has("warm-up request done")
    assert "".join(tokens_of(chunks[0])) == token_text(0, 0) + token_text(0, 1)  # the job after it is unaffected


def test_without_warm_up_no_request_is_sent_and_the_openai_layer_waits_for_idle():
    engine = FakeEngine()
    worker = make_worker(engine, engine_warmup=False)

    async def scenario():
        await worker.loop_started()
        return worker._openai_build

    build = run(scenario())
    assert engine.requests == {} and build is not None  # scheduled for after the first idle moment


def test_a_failing_warm_up_is_logged_and_the_worker_serves(caplog):
    engine = FakeEngine()
    engine.fail_after = 0
    worker = make_worker(engine)

    async def nothing():
        pass

    worker.openai.server = nothing

    async def scenario():
        await worker.loop_started()
        engine.fail_after = None
        return await collect(worker, {"prompt": "hi", "sampling_params": {"max_tokens": 1}})

    chunks = run(scenario())
    assert "The warm-up request failed" in caplog.text
    assert tokens_of(chunks[0]) == [token_text(0, 0)]
