"""Cancelling a job through `tpworker dev` aborts its engine request and frees its slot.

MAX_CONCURRENCY=1: while a long job runs, a second job waits in the queue; cancelling the first
must let the second start and finish at once (its wait is measured)."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import DevEndpoint

pytestmark = pytest.mark.engine

LONG = {
    "prompt": "Tell a very long story.",
    "stream": True,
    "sampling_params": {"max_tokens": 1800, "ignore_eos": True},
}


@pytest.fixture(scope="module")
def dev(models, tmp_path_factory):
    endpoint = DevEndpoint(tmp_path_factory.mktemp("dev") / "dev.log", MAX_CONCURRENCY="1")
    yield endpoint
    endpoint.close()


def wait_status(dev, job_id, wanted, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = httpx.get(f"{dev.url}/status/{job_id}").json()
        if status["status"] in wanted:
            return status
        time.sleep(0.2)
    return status


def test_cancel_stops_a_long_generation_and_the_queued_job_starts(dev):
    long_job = httpx.post(f"{dev.url}/run", json={"input": LONG}).json()["id"]
    first = httpx.get(f"{dev.url}/stream/{long_job}", timeout=15).json()
    assert first["status"] == "IN_PROGRESS" and first["stream"]
    queued = httpx.post(
        f"{dev.url}/run", json={"input": {"prompt": "Hi", "sampling_params": {"max_tokens": 8}}}
    ).json()["id"]
    time.sleep(2)
    assert httpx.get(f"{dev.url}/status/{queued}").json()["status"] == "IN_QUEUE"  # the one slot is taken

    cancelled_at = time.monotonic()
    assert httpx.post(f"{dev.url}/cancel/{long_job}").json()["status"] == "CANCELLED"
    done = wait_status(dev, queued, ("COMPLETED", "FAILED"), 30)
    waited = time.monotonic() - cancelled_at
    assert done["status"] == "COMPLETED", done
    # 1800 tokens would take about a minute here; the queued job ran within seconds of the cancel
    assert waited < 15, waited
    tokens = sum(
        len(c["output"]["choices"][0]["tokens"]) for c in httpx.get(f"{dev.url}/stream/{long_job}").json()["stream"]
    )
    assert tokens < 1800
    assert "Job stopped." in dev.log()


def test_cancel_of_a_queued_job_removes_it(dev):
    running = httpx.post(f"{dev.url}/run", json={"input": LONG}).json()["id"]
    queued = httpx.post(f"{dev.url}/run", json={"input": {"prompt": "Hi"}}).json()["id"]
    assert httpx.post(f"{dev.url}/cancel/{queued}").json()["status"] == "CANCELLED"
    assert httpx.post(f"{dev.url}/cancel/{running}").json()["status"] == "CANCELLED"
    time.sleep(2)
    assert httpx.get(f"{dev.url}/health").json()["jobs"]["inQueue"] == 0
    assert wait_status(dev, queued, ("COMPLETED",), 3)["status"] == "CANCELLED"
