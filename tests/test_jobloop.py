"""tpworker.serving.jobloop: RunPod's job loop with events in place of its sleeps.

These run the SDK's own JobScaler code (job queue, job_progress, stop-signal loop, drain) with two
test doubles for RunPod's cloud, which cannot exist here: the job-take API (`jobs_fetcher`, fed from an
asyncio queue) and the job runner (`jobs_handler`, which records when each job runs). The backstop
is raised to an hour, so a job that is not started by an event would time the test out.
The full path (the real SDK HTTP job take and result posts against `tpworker dev`) runs in
test_dev_endpoint.py and the bench.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import Job, JobsProgress

from tpworker.serving import jobloop


class FakeRunPod:
    """The job-take API and the handler, as far as the job loop sees them."""

    def __init__(self):
        self.waiting: asyncio.Queue = asyncio.Queue()
        self.takes: list[int] = []  # jobs asked for, per take
        self.in_take = False  # a take is waiting for a job (RunPod's long poll)
        self.running: set[str] = set()
        self.most_at_once = 0
        self.finished: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def take(self, session, jobs_needed):
        self.takes.append(jobs_needed)
        self.in_take = True
        try:
            jobs = [await self.waiting.get()]
        finally:
            self.in_take = False
        while len(jobs) < jobs_needed and not self.waiting.empty():
            jobs.append(self.waiting.get_nowait())
        return jobs

    async def run(self, session, config, job):
        self.running.add(job["id"])
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            await self.release.setdefault(job["id"], asyncio.Event()).wait()
        finally:
            self.running.discard(job["id"])
            self.finished.append(job["id"])

    def submit(self, job_id: str, hold: bool = False) -> None:
        event = self.release.setdefault(job_id, asyncio.Event())
        if not hold:
            event.set()
        self.waiting.put_nowait({"id": job_id, "input": {}})


async def _no_stop_signals(session):
    await asyncio.sleep(0.05)
    return []


def _start(
    concurrency: int, take=None, load_state: bool = False
) -> tuple[FakeRunPod, jobloop.EventDrivenJobScaler, asyncio.Task]:
    """The job loop running on a FakeRunPod (its job take, or `take`). Call inside an event loop.
    `load_state`: the SDK's job set is loaded from its file first, as when a process imports the SDK."""
    fake = FakeRunPod()
    progress = JobsProgress()  # the SDK's job set: a process-wide singleton
    set.clear(progress)
    if load_state:
        JobsProgress._load_state(progress)  # the SDK's own load (this process's instance no longer has it)
    scaler = jobloop.EventDrivenJobScaler(
        {
            "concurrency_modifier": lambda current: concurrency,
            "jobs_fetcher": take or fake.take,
            "jobs_handler": fake.run,
            "stop_signals_fetcher": _no_stop_signals,
        }
    )
    return fake, scaler, asyncio.create_task(scaler.run())


async def _until(condition, timeout: float = 10.0) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture(autouse=True)
def no_backstop(monkeypatch):
    monkeypatch.setattr(jobloop, "BACKSTOP_S", 3600.0)


def test_fills_every_slot_and_refills_a_freed_one_at_once():
    async def scenario():
        fake, scaler, loop_task = _start(concurrency=3)
        for job_id in ("a", "b", "c", "d"):
            fake.submit(job_id, hold=True)
        # All three slots fill: the SDK's loop, counting queued jobs twice, would hold the third
        # job back for its 1 s sleep (here: for the hour-long backstop).
        await _until(lambda: fake.running == {"a", "b", "c"})
        assert fake.takes[0] == 3
        fake.release["b"].set()
        await _until(lambda: fake.running == {"a", "c", "d"})
        for job_id in ("a", "c", "d"):
            fake.release[job_id].set()
        await _until(lambda: len(fake.finished) == 4)
        assert fake.most_at_once == 3
        await _until(lambda: fake.in_take)
        scaler.kill_worker()
        fake.submit("unblocks-the-take")  # the take long-polls; the SDK waits for it too
        await asyncio.wait_for(loop_task, 10)
        # A job the take returned after the stop was taken from RunPod: the drain runs it.
        assert fake.finished[-1] == "unblocks-the-take"

    asyncio.run(scenario())


def test_a_job_taken_while_idle_starts_without_waiting_for_a_poll():
    async def scenario():
        fake, scaler, loop_task = _start(concurrency=2)
        await _until(lambda: fake.takes)  # idle, waiting in the take
        for job_id in ("x", "y", "z"):
            fake.submit(job_id)
            await _until(lambda job_id=job_id: job_id in fake.finished)
        await _until(lambda: fake.in_take)
        scaler.kill_worker()
        fake.submit("last")
        await asyncio.wait_for(loop_task, 10)
        assert fake.finished[:3] == ["x", "y", "z"]

    asyncio.run(scenario())


def test_shutdown_drains_the_jobs_in_flight():
    async def scenario():
        fake, scaler, loop_task = _start(concurrency=2)
        fake.submit("long", hold=True)
        await _until(lambda: fake.running == {"long"} and fake.in_take)
        scaler.kill_worker()
        await asyncio.sleep(0.3)  # the SDK's loop has seen the stop by now and only drains
        assert not loop_task.done(), "the loop stopped with a job in flight"
        fake.submit("after-stop")  # the pending take returns a job after the stop
        await asyncio.sleep(0.1)
        fake.release["long"].set()
        await asyncio.wait_for(loop_task, 10)
        assert "long" in fake.finished
        # A job the take returned after the stop is queued; the drain runs it rather than dropping it.
        assert "after-stop" in fake.finished

    asyncio.run(scenario())


def test_a_failing_job_take_backs_off_instead_of_spinning():
    async def scenario():
        calls = 0

        async def unreachable(session, jobs_needed):
            nonlocal calls
            calls += 1
            raise ConnectionError("the job-take API is unreachable")

        _, scaler, loop_task = _start(concurrency=1, take=unreachable)
        await asyncio.sleep(1.0)
        scaler.kill_worker()
        await asyncio.wait_for(loop_task, 10)
        # Backoff 0.1, 0.2, 0.5 s: 4 takes in the first second (the SDK's loop makes thousands).
        assert 2 <= calls <= 5, calls

    asyncio.run(scenario())


def test_install_makes_the_sdk_build_this_loop(monkeypatch):
    monkeypatch.setattr(rp_scale, "JobScaler", rp_scale.JobScaler)  # undone after the test
    jobloop.install()
    assert rp_scale.JobScaler is jobloop.EventDrivenJobScaler


def test_no_job_is_taken_before_the_workers_warm_up_ends(monkeypatch):
    """install(on_loop_start=worker.loop_started): what it returns (the warm-up) is awaited before
    the first take, so a job waiting at RunPod is taken by a warm worker."""

    async def scenario():
        warmed = asyncio.get_running_loop().create_future()
        monkeypatch.setattr(jobloop, "_on_loop_start", lambda: warmed)
        fake, scaler, loop_task = _start(concurrency=2)
        fake.submit("waiting-at-start")
        await asyncio.sleep(0.3)
        assert fake.takes == [] and not fake.finished
        warmed.set_result(None)
        await _until(lambda: "waiting-at-start" in fake.finished)
        await _until(lambda: fake.in_take)
        scaler.kill_worker()
        fake.submit("last")
        await asyncio.wait_for(loop_task, 10)

    asyncio.run(scenario())


def test_jobs_left_by_an_earlier_process_do_not_hold_the_loop(monkeypatch, tmp_path, caplog):
    """The SDK loads its set of jobs in progress from a file in the working directory when a process
    starts. A worker killed in a job leaves that job there; the SDK's set_scale then waits for it
    forever before the first take, and the next worker started in that folder never takes a job
    (tpworker dev and a restarted container both start in the same folder). This loop drops them,
    says so, and keeps its own set in memory only."""
    state_file = tmp_path / ".runpod_jobs.pkl"
    state_file.write_bytes(pickle.dumps({Job(id="killed-in-a-job")}))  # what the SDK saves
    monkeypatch.setattr(JobsProgress, "_STATE_FILE", str(state_file))
    monkeypatch.setattr(JobsProgress, "_STATE_DIR", str(tmp_path))

    async def scenario():
        fake, scaler, loop_task = _start(concurrency=2, load_state=True)
        assert not state_file.exists(), "the earlier process's job set was left for the next start"
        fake.submit("first")
        await _until(lambda: "first" in fake.finished)
        await _until(lambda: fake.in_take)
        assert not state_file.exists(), "the job set was written to the working directory"
        scaler.kill_worker()
        fake.submit("last")
        await asyncio.wait_for(loop_task, 10)

    with caplog.at_level("WARNING", logger=jobloop.__name__):
        asyncio.run(scenario())
    assert "killed-in-a-job" in caplog.text and "not running in this one" in caplog.text
