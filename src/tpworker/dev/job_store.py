"""The dev endpoint's jobs, in memory: queued, taken by the worker, streamed, finished, cancelled,
expired, as RunPod's endpoint keeps them."""

from __future__ import annotations

import ast
import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
WORKER_TOKEN = "tpworker-dev"
LONG_POLL_SECONDS = 5.0  # how long job-take and job-stop hold a request open
STREAM_WAIT_SECONDS = 2.0  # how long /stream waits for a new chunk (RunPod's client times out at 10 s)
RUNSYNC_WAIT_SECONDS = 90.0


@dataclass
class Job:
    id: str
    input: Any
    policy: dict[str, Any] = field(default_factory=dict)
    status: str = "IN_QUEUE"
    chunks: list[Any] = field(default_factory=list)  # every streamed chunk, in order
    streamed: int = 0  # chunks already handed out by /stream
    output: Any = None
    error: Any = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Wake everyone waiting on this job (they re-check, then wait on a fresh event)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def view(self, *, with_output: bool = True) -> dict[str, Any]:
        """The job as RunPod's /status shows it."""
        shown: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started:
            shown["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished and self.started:
            shown["executionTime"] = int((self.finished - self.started) * 1000)
        if with_output and self.status == "COMPLETED":
            shown["output"] = self.output
        if self.error is not None:
            shown["error"] = self.error
        return shown


def openai_error(job: Job) -> tuple[dict[str, Any], int]:
    """OpenAI's error object and HTTP status from a failed job. RunPod's SDK reports a yielded
    {"error": {...}} as the str() of that dict; recover it."""
    error = job.error
    if isinstance(error, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                error = parse(error)
                break
            except (ValueError, SyntaxError):
                continue
    if isinstance(error, dict) and "message" in error:
        code = given if isinstance(given := error.get("code"), int) else 500
        return {"error": error}, code
    status = {"TIMED_OUT": 504, "CANCELLED": 499}.get(job.status, 500)
    return {
        "error": {"message": str(error or job.status), "type": "InternalServerError", "param": None, "code": status}
    }, status


class DevEndpoint:
    """The endpoint's state: jobs, the queue the worker takes from, and the stop channel."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.queued = asyncio.Event()
        self.stops: list[str] = []
        self.stopping = asyncio.Event()
        self.counts = {"completed": 0, "failed": 0, "retried": 0}
        self.worker_polls = 0  # job-take requests seen: the worker is up once it polls
        self.worker_exits: list[int] = []

    # ------------------------------------------------------------------ jobs

    def submit(self, job_input: Any, policy: dict[str, Any] | None = None) -> Job:
        job = Job(id=f"dev-{uuid.uuid4()}", input=job_input, policy=policy or {})
        self.jobs[job.id] = job
        self.queue.append(job.id)
        self.queued.set()
        return job

    def finish(self, job: Job, status: str, output: Any = None, error: Any = None) -> None:
        if job.status in FINAL:
            return
        job.status, job.output, job.error, job.finished = status, output, error, time.time()
        if status == "COMPLETED":
            self.counts["completed"] += 1
        elif status == "FAILED":
            self.counts["failed"] += 1
        job.touch()

    def stop(self, job: Job, status: str) -> None:
        """Cancel or time out a job: take it off the queue, or tell the worker to stop it."""
        if job.status in FINAL:
            return
        if job.id in self.queue:
            self.queue.remove(job.id)
        elif job.status == "IN_PROGRESS":
            self.stops.append(job.id)
            self.stopping.set()
        self.finish(job, status)

    async def wait(self, job: Job, seconds: float, *, for_chunk: bool = False) -> None:
        """Until the job is final (or has an unread chunk), at most `seconds`."""
        deadline = time.monotonic() + seconds
        while job.status not in FINAL and not (for_chunk and len(job.chunks) > job.streamed):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(job.changed.wait(), left)
            except TimeoutError:
                return

    async def expire(self) -> None:
        """Jobs past their policy's executionTimeout (ms) are stopped, as RunPod does."""
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for job in list(self.jobs.values()):
                limit = job.policy.get("executionTimeout")
                if (
                    job.status == "IN_PROGRESS"
                    and limit
                    and job.started is not None
                    and now - job.started > limit / 1000
                ):
                    self.stop(job, "TIMED_OUT")

    def worker_exited(self, code: int) -> None:
        self.worker_exits.append(code)
        self.worker_polls = 0
        for job in self.jobs.values():
            if job.status == "IN_PROGRESS":
                self.finish(job, "FAILED", error=f"The worker exited (status {code}) while running this job.")

    def health(self, worker_running: bool) -> dict[str, Any]:
        states = [j.status for j in self.jobs.values()]
        ready = worker_running and self.worker_polls > 0
        return {
            "jobs": {**self.counts, "inProgress": states.count("IN_PROGRESS"), "inQueue": len(self.queue)},
            "workers": {
                "idle": int(ready and "IN_PROGRESS" not in states),
                "running": int(ready and "IN_PROGRESS" in states),
                "initializing": int(worker_running and not ready),
                "unhealthy": len(self.worker_exits),
            },
        }

    # ------------------------------------------------------------------ worker side

    async def take(self, count: int) -> list[Job]:
        self.worker_polls += 1
        deadline = time.monotonic() + LONG_POLL_SECONDS
        while not self.queue:
            self.queued.clear()
            try:
                await asyncio.wait_for(self.queued.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return []
        taken: list[Job] = []
        while self.queue and len(taken) < count:
            job = self.jobs[self.queue.popleft()]
            job.status, job.started = "IN_PROGRESS", time.time()
            job.touch()
            taken.append(job)
        return taken

    async def stop_signals(self) -> list[str]:
        if not self.stops:
            self.stopping.clear()
            try:
                await asyncio.wait_for(self.stopping.wait(), LONG_POLL_SECONDS)
            except TimeoutError:
                return []
        signals, self.stops = self.stops, []
        return signals
