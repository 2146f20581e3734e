"""The worker's lifecycle and its time limit per job, on the fake engine (tests/fake_engine.py), in
milliseconds: the states a start goes through, SIGTERM's drain, an engine failure, REQUEST_TIMEOUT, and the
refused worker that answers every job with the cause of its refused start. The real-engine tests
(test_refused_start, test_structured_outputs, test_faults) prove the same on vLLM and RunPod's job loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_engine import FakeEngine
from test_worker_fast import collect, make_worker, run

from tpworker.config.settings import SettingsError
from tpworker.serving.lifecycle import Lifecycle, State
from tpworker.serving.refused import RefusedWorker


def test_a_start_goes_through_warming_up_to_serving():
    worker = make_worker(FakeEngine())
    seen = []
    worker.lifecycle.on_change(lambda state, error: seen.append(state))

    async def nothing():
        pass

    worker.openai.server = nothing

    async def scenario():
        assert worker.lifecycle.state is State.STARTING
        await worker.loop_started()

    run(scenario())
    assert seen == [State.WARMING_UP, State.SERVING]


def test_on_runpods_own_loop_every_first_job_waits_for_the_warm_up_the_first_began():
    """JOB_LOOP=sdk: no start hook, so app.py's handler calls started_in_this_loop() before each job. Three
    jobs arrive together: one warm-up runs, and none of them starts before it has ended."""
    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine)
    order = []

    async def slow_openai_build():
        await asyncio.sleep(0.2)
        order.append("warm-up ended")

    worker.openai.server = slow_openai_build

    async def job(name):
        await worker.started_in_this_loop()
        order.append(f"{name} started")
        return await collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 2}})

    async def scenario():
        return await asyncio.gather(job("a"), job("b"), job("c"))

    results = run(scenario())
    assert order[0] == "warm-up ended" and sorted(order[1:]) == ["a started", "b started", "c started"]
    assert worker.lifecycle.state is State.SERVING and all("error" not in r[-1] for r in results)


def test_sigterm_drains_then_stops_and_a_job_after_the_grace_is_refused():
    engine = FakeEngine(token_delay=0.02)
    worker = make_worker(engine, shutdown_grace_seconds=0.2)

    async def scenario():
        long = asyncio.ensure_future(collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 500}}))
        while not engine.unfinished_requests():
            await asyncio.sleep(0.01)
        worker.shutdown()
        await asyncio.sleep(0.05)
        draining = worker.lifecycle.state
        chunks = await long
        return draining, chunks, await collect(worker, {"prompt": "x"})

    draining, chunks, late = run(scenario())
    assert draining is State.DRAINING and worker.lifecycle.state is State.STOPPED
    assert "SHUTDOWN_GRACE_SECONDS" in chunks[-1]["error"]["message"]
    assert late[0]["error"]["code"] == 503 and "SHUTDOWN_GRACE_SECONDS" in late[0]["error"]["message"]


def test_an_engine_failure_stops_the_worker_from_another_thread():
    import threading

    engine = FakeEngine(token_delay=0.02)
    worker = make_worker(engine)

    async def scenario():
        job = asyncio.ensure_future(collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 500}}))
        while not engine.unfinished_requests():
            await asyncio.sleep(0.01)
        threading.Thread(target=worker.engine_failed, args=("VLLM::Worker_TP1 exited",)).start()  # the watchdog
        return await job

    chunks = run(scenario())
    assert chunks[-1]["error"]["code"] == 503 and "VLLM::Worker_TP1 exited" in chunks[-1]["error"]["message"]
    assert worker.lifecycle.state is State.STOPPED and engine.unfinished_requests() == 0


def test_a_job_past_request_timeout_is_aborted_with_one_error_naming_it():
    engine = FakeEngine(token_delay=0.01)
    worker = make_worker(engine, request_timeout=0.3)

    async def scenario():
        began = time.monotonic()
        chunks = await collect(worker, {"prompt": "x", "stream": True, "sampling_params": {"max_tokens": 2000}})
        took = time.monotonic() - began
        return chunks, took, await collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 3}})

    chunks, took, after = run(scenario())
    errors = [chunk["error"] for chunk in chunks if "error" in chunk]
    assert len(errors) == 1 and chunks[-1]["error"] is errors[0]  # streamed tokens, then one error
    assert errors[0]["code"] == 408 and "REQUEST_TIMEOUT=0.3 s" in errors[0]["message"]
    assert 0.3 <= took < 2
    assert list(engine.requests.values()).count("aborted") == 1  # the engine request ended with the job
    assert after[0]["usage"]["output"] == 3  # the worker serves on


def test_a_job_within_request_timeout_is_untouched():
    worker = make_worker(FakeEngine(token_delay=0.001), request_timeout=5)
    (chunk,) = run(collect(worker, {"prompt": "x", "sampling_params": {"max_tokens": 50}}))
    assert chunk["usage"]["output"] == 50


def test_a_refused_worker_answers_every_job_of_either_form_with_the_cause():
    life = Lifecycle()
    refused = RefusedWorker(life, SettingsError(["MAX_N='many' is not valid: not a number. Accepted: an integer."]))

    async def scenario():
        native = [chunk async for chunk in refused.handle({"id": "a", "input": {"prompt": "hi"}})]
        route = [chunk async for chunk in refused.handle({"id": "b", "input": {"openai_route": "/v1/models"}})]
        return native, route

    for answer in run(scenario()):
        assert len(answer) == 1
        assert answer[0]["error"]["code"] == 503
        assert answer[0]["error"]["message"] == (
            "The worker cannot start: MAX_N='many' is not valid: not a number. Accepted: an integer."
        )
    assert life.state is State.REFUSED and refused.concurrency() >= 1


def test_which_refused_starts_keep_a_worker_on_runpod_up(monkeypatch):
    """Weights too big for the GPUs (the planner's own refusal, on Llama-3-70B's real config): no GPU here to
    start the worker with, so the decision is checked on its own; the other classes run end to end in
    tests/test_refused_start.py."""
    from test_planner import GiB, MemoryModel, facts

    from tpworker.app import _serves_refusal
    from tpworker.errors import StartRefused
    from tpworker.planning.preflight import PreflightError, memory_findings

    with pytest.raises(PreflightError) as too_big:
        memory_findings(MemoryModel(facts("llama-3-70b-instruct")), 1, 1, 80 * GiB, 0.92, 8192, 30, 8)
    assert not too_big.value.retryable
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "http://runpod/job-take")
    monkeypatch.delenv("ON_REFUSED_START", raising=False)
    assert _serves_refusal(too_big.value, [])
    assert not _serves_refusal(StartRefused("the hub did not answer", retryable=True), [])
    assert not _serves_refusal(too_big.value, ["--test_input", "{}"])
    monkeypatch.setenv("ON_REFUSED_START", "exit")
    assert not _serves_refusal(too_big.value, [])
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB")
    monkeypatch.delenv("ON_REFUSED_START")
    assert not _serves_refusal(too_big.value, [])  # not on RunPod: exit 2 as before


def test_job_loop_chooses_runpods_scaler_or_the_workers():
    from tpworker.config.settings import load_settings, start_policy

    assert start_policy({}).job_loop == "worker" and start_policy({"JOB_LOOP": "SDK"}).job_loop == "sdk"
    assert load_settings({"JOB_LOOP": "sdk"}).worker.job_loop == "sdk"
    with pytest.raises(SettingsError) as refused:
        load_settings({"JOB_LOOP": "fast"})
    assert "JOB_LOOP='fast'" in str(refused.value) and "'worker'" in str(refused.value), str(refused.value)
