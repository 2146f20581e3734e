"""RunPod's job loop without its sleeps on a job's path: the one module that touches runpod internals.

runpod 1.10's JobScaler (runpod/serverless/modules/rp_scale.py) has five habits this worker cannot keep:
- it looks at its job queue every 100 ms, so a taken job waits 0-100 ms before its handler starts
  (`tpworker bench` found this most of what the RunPod path added to a lone request's first token);
- it counts a job waiting in that queue twice (queue + in progress), and when that count reaches the
  concurrency it sleeps 1 s before taking more: slots stay empty while jobs wait at RunPod;
- on a stop it ends its run loop as soon as its queue is empty, while a job take may still be open:
  a job that take returns was taken from RunPod and is never run;
- when a take fails (the API unreachable) it retries at once, logging an error each time, thousands
  of times a second;
- it keeps its set of jobs in progress in a file in the working directory (.runpod_jobs.pkl), loaded
  when a process starts and read back at every take: a worker killed in a job leaves that job there,
  and the next process started in that folder (a restarted container, `tpworker dev` again) waits in
  set_scale for it to end, forever, before it takes a job.

`EventDrivenJobScaler` keeps the rest of the SDK's loop (its job take, stream and result posts, stop
signals, heartbeat, SIGTERM drain) and replaces its two loops: a job starts as soon as it is queued, a
slot is refilled as soon as a job ends, the run loop lasts until the last take has ended, and failed
takes back off. Its job set lives in memory only: a worker's jobs end with its process. runpod is
pinned (pyproject); `tpworker contract` says whether another release still has what this relies on
(contract/runpod_internals.py). JOB_LOOP=sdk runs the SDK's JobScaler unchanged instead (app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from runpod.http_client import TooManyRequests
from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import JobsProgress

if TYPE_CHECKING:
    from aiohttp import ClientSession  # runpod's session class derives from it

log = logging.getLogger(__name__)

FAILED_TAKE_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # after 1, 2, ... failed takes in a row
TOO_MANY_REQUESTS_BACKOFF_S = 5.0  # the SDK's own debounce
BACKSTOP_S = 1.0  # the loops re-check this often even when no event came (they never rely on it)

_on_loop_start: Callable[[], Awaitable[object] | None] | None = None  # set by install()


class EventDrivenJobScaler(rp_scale.JobScaler):  # type: ignore[misc]  # runpod ships no types
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._job_queued = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taking = True  # get_jobs may still return jobs (a take can end after the stop)
        _keep_in_memory(self.job_progress)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if _on_loop_start is not None and (ready := _on_loop_start()) is not None:
            await ready  # the worker's warm-up: no job is taken before it ends
        await super().run()

    def kill_worker(self) -> None:
        super().kill_worker()
        # Called from the SIGTERM handler, between two steps of the loop: wake both loops from the
        # loop itself, so that they see the shutdown now rather than at their backstop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._job_queued.set()
        self._slot_freed.set()

    def jobs_held(self) -> int:
        """Jobs taken and not finished. The SDK adds a job to job_progress when it queues it, so
        this count already includes the queue (the SDK's current_occupancy adds the queue again)."""
        count: int = self.job_progress.get_job_count()
        return count

    async def get_jobs(self, session: ClientSession) -> None:
        try:
            await self._take_jobs(session)
        finally:
            self._taking = False
            self._job_queued.set()

    async def _take_jobs(self, session: ClientSession) -> None:
        failed_takes = 0
        while self.is_alive():
            await self.set_scale()
            self._slot_freed.clear()
            jobs_needed = self.current_concurrency - self.jobs_held()
            if jobs_needed <= 0:
                await _wait(self._slot_freed, BACKSTOP_S)
                continue
            try:
                jobs = await asyncio.wait_for(
                    self.jobs_fetcher(session, jobs_needed), timeout=self.jobs_fetcher_timeout
                )
                failed_takes = 0
            except TooManyRequests:
                await _wait(self._shutdown_event, TOO_MANY_REQUESTS_BACKOFF_S)
                continue
            except TimeoutError:
                continue  # the long poll ended with no job
            except Exception as error:  # the SDK logs and retries; so do we, after a pause
                delay = FAILED_TAKE_BACKOFF_S[min(failed_takes, len(FAILED_TAKE_BACKOFF_S) - 1)]
                failed_takes += 1
                if failed_takes == 1 or delay == FAILED_TAKE_BACKOFF_S[-1]:
                    log.error("Taking a job failed (%s: %s); retrying in %.1f s.", type(error).__name__, error, delay)
                await _wait(self._shutdown_event, delay)
                continue
            for job in jobs or ():
                await self.jobs_queue.put(job)
                self.job_progress.add(job)
            if jobs:
                self._job_queued.set()

    async def run_jobs(self, session: ClientSession) -> None:
        running: set[asyncio.Task[None]] = set()
        # Until the last take has ended: a job it returns after a stop was taken from RunPod and is
        # run, not dropped (the SDK's loop stops as soon as its queue is empty).
        while self._taking or not self.jobs_queue.empty():
            self._job_queued.clear()
            while len(running) < self.current_concurrency and not self.jobs_queue.empty():
                job = self.jobs_queue.get_nowait()
                task = asyncio.create_task(self.handle_job(session, job))
                running.add(task)
                self.jobs_tasks[job["id"]] = task
            if not self._taking and self.jobs_queue.empty():
                break
            queued = asyncio.ensure_future(self._job_queued.wait())
            try:
                done, _ = await asyncio.wait(
                    running | {queued}, timeout=BACKSTOP_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                queued.cancel()
            running -= done
        # Shutdown: let the jobs in flight finish (the worker's SIGTERM grace bounds them), as the SDK does.
        for result in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("A job failed while the worker shut down: %s", result)

    async def handle_job(self, session: ClientSession, job: dict[str, Any]) -> None:
        try:
            await super().handle_job(session, job)
        finally:
            self._slot_freed.set()


def _keep_in_memory(progress: JobsProgress) -> None:
    """Stop the SDK's job set from loading or saving its file, and drop the jobs it loaded from an
    earlier process when this one imported the SDK: none of them runs here."""
    progress._load_state = progress._save_state = lambda: None
    if left_over := sorted(job.id for job in progress):
        log.warning(
            "RunPod's SDK recorded job(s) %s as in progress in %s, left by an earlier worker process "
            "(it stopped during them). They are not running in this one, so they are dropped from its "
            "count of jobs in progress.",
            ", ".join(left_over),
            JobsProgress._STATE_FILE,
        )
        set.clear(progress)
    with contextlib.suppress(OSError):
        os.remove(JobsProgress._STATE_FILE)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


def install(on_loop_start: Callable[[], Awaitable[object] | None] | None = None) -> None:
    """Make runpod.serverless.start run EventDrivenJobScaler (its worker module builds
    rp_scale.JobScaler by name when the loop starts). `on_loop_start()` is called inside the job
    loop's event loop as it starts, after the SDK has installed its signal handlers; what it
    returns, if not None, is awaited before the first job is taken."""
    global _on_loop_start
    _on_loop_start = on_loop_start
    rp_scale.JobScaler = EventDrivenJobScaler
