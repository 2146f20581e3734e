"""Faults injected into a real worker behind `tpworker dev`: a TP rank stopped (the engine hangs), a
TP rank killed (the engine dies), SIGTERM with jobs in flight. In each, every in-flight job ends with
one clear error or its full output, the worker exits (non-zero for a failed engine, 0 for SIGTERM),
the dev endpoint starts a new one as RunPod would, and no job is lost.

One endpoint (TP=2, so that a rank is a process of its own) serves the three faults in turn.
"""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest

from conftest import DevEndpoint, tallied

pytestmark = pytest.mark.engine

STALL_TIMEOUT = 6
GRACE = 8
LONG = {
    "prompt": "Tell a very long story.",
    "stream": True,
    "sampling_params": {"max_tokens": 1900, "ignore_eos": True},
}
SHORT = {"prompt": "The capital of France is", "sampling_params": {"max_tokens": 6, "temperature": 0}}


@pytest.fixture(scope="module")
def dev(models, tmp_path_factory):
    endpoint = DevEndpoint(
        tmp_path_factory.mktemp("faults") / "dev.log",
        TENSOR_PARALLEL_SIZE="2",
        MAX_CONCURRENCY="4",
        ENGINE_STALL_TIMEOUT=str(STALL_TIMEOUT),
        SHUTDOWN_GRACE_SECONDS=str(GRACE),
    )
    yield endpoint
    endpoint.close()


def streaming(dev: DevEndpoint, job_input) -> str:
    """A job that has started producing tokens."""
    job_id = dev.run(job_input)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        first = httpx.get(f"{dev.url}/stream/{job_id}", timeout=60).json()
        if first["stream"]:
            assert first["status"] == "IN_PROGRESS", first
            return job_id
    raise AssertionError(f"the job produced nothing: {first}")


def rank_process(worker, rank: int):
    for child in worker.children(recursive=True):
        if child.name() == f"VLLM::Worker_TP{rank}":
            return child
    raise LookupError(f"no TP rank {rank} under the worker")


def exits(dev: DevEndpoint) -> list[int]:
    return [int(code) for code in re.findall(r"The worker exited with status (-?\d+)", dev.log())]


def wait_exit(dev: DevEndpoint, before: int, seconds: float) -> float:
    """Seconds until the worker exits once more than the `before` exits already logged."""
    began = time.monotonic()
    while len(exits(dev)) <= before and time.monotonic() - began < seconds:
        time.sleep(0.1)
    return time.monotonic() - began


def answers_after_restart(dev: DevEndpoint) -> None:
    dev.wait_ready()
    done = dev.wait_status(dev.run(SHORT))
    assert done["status"] == "COMPLETED", done
    assert "Paris" in "".join(done["output"][0]["choices"][0]["tokens"])


def test_a_stalled_rank_fails_in_flight_jobs_and_the_worker_exits_nonzero(dev):
    with tallied("faults", "stalled TP rank (SIGSTOP)"):
        dev.wait_ready()
        before = len(exits(dev))
        jobs = [streaming(dev, LONG), streaming(dev, LONG)]
        worker = dev.worker_process()
        rank_process(worker, 1).send_signal(signal.SIGSTOP)  # rank 0 and the engine core now wait on it
        stopped = time.monotonic()

        ended = [dev.wait_status(job, ("FAILED", "COMPLETED"), STALL_TIMEOUT + 15) for job in jobs]
        took = time.monotonic() - stopped
        for status in ended:
            assert status["status"] == "FAILED", status
            assert "no progress" in status["error"] and "ENGINE_STALL_TIMEOUT" in status["error"], status
        assert took < STALL_TIMEOUT + 10, took
        wait_exit(dev, before, 30)
        assert exits(dev)[before:] == [3]
        assert not worker.is_running() or worker.status() == "zombie"
        answers_after_restart(dev)


def test_a_killed_rank_fails_in_flight_jobs_within_10s_and_the_worker_exits_within_30s(dev):
    with tallied("faults", "killed TP rank (SIGKILL)"):
        dev.wait_ready()
        before = len(exits(dev))
        jobs = [streaming(dev, LONG), streaming(dev, LONG)]
        rank_process(dev.worker_process(), 1).kill()
        killed = time.monotonic()

        ended = [dev.wait_status(job, ("FAILED", "COMPLETED"), 10) for job in jobs]
        took = time.monotonic() - killed
        for status in ended:
            assert status["status"] == "FAILED", status
            assert "VLLM::Worker_TP1" in status["error"] and "exited" in status["error"], status
        assert took < 10, took
        assert wait_exit(dev, before, 30) < 30
        assert exits(dev)[before:] == [3]
        answers_after_restart(dev)


def test_sigterm_finishes_jobs_within_the_grace_period_fails_the_rest_and_exits_0(dev):
    with tallied("faults", "SIGTERM with jobs in flight"):
        dev.wait_ready()
        before = len(exits(dev))
        long_job = streaming(dev, LONG)
        short_job = dev.run({**SHORT, "sampling_params": {"max_tokens": 40, "temperature": 0, "ignore_eos": True}})
        worker = dev.worker_process()
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        after = dev.run(SHORT)  # submitted during the shutdown: served by this worker or the next

        short = dev.wait_status(short_job, seconds=GRACE + 10)
        assert short["status"] == "COMPLETED", short
        assert short["output"][0]["usage"]["output"] == 40
        long = dev.wait_status(long_job, seconds=GRACE + 15)
        assert (
            long["status"] == "FAILED" and "grace period" in long["error"] and "SHUTDOWN_GRACE_SECONDS" in long["error"]
        ), long
        assert GRACE - 1 < time.monotonic() - signalled < GRACE + 15
        wait_exit(dev, before, 30)
        assert exits(dev)[before:] == [0]
        late = dev.wait_status(after, seconds=180)
        assert late["status"] == "COMPLETED", late  # nothing lost
