"""A worker whose engine is dead or hung must not stay up: RunPod would keep sending it jobs and
billing for it. The watchdog notices, ends every in-flight job with an error, and exits the process
non-zero so that RunPod starts a fresh worker.

It runs in a thread of its own, so that the worker still exits when the job loop's event loop is
stuck (the jobs' errors then cannot be posted; RunPod fails them when the worker goes), and it
checks what vLLM itself may take seconds to notice:
- a vLLM process (engine core or a TP/PP rank) has exited;
- vLLM reports the engine dead (EngineDeadError);
- requests are in flight and the engine core has reported no step for ENGINE_STALL_TIMEOUT seconds
  (a hung collective, a stopped process); before its first step, which may compile, at least
  FIRST_STEP_GRACE_S.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tpworker.serving.engine import Engine
    from tpworker.serving.worker import Worker

log = logging.getLogger(__name__)

# The exit status of a worker whose engine failed (RunPod replaces a worker that exits).
EXIT_ENGINE_FAILED = 3
CHECK_INTERVAL_S = 0.5
# After the jobs are told, how long their error outputs get to reach RunPod.
REPORT_TIMEOUT_S = 10
# The engine's first step may compile: with TP>1 on CPU, vLLM compiles its vocabulary-shard mask with torch's
# inductor at the first request (seconds, C++ builds included), after its own warm-up. A stall limit meant
# for a step every few seconds must not fail that one.
FIRST_STEP_GRACE_S = 120


def engine_problem(engine: Engine, stall_timeout: float) -> str | None:
    """Why the engine cannot serve any more, or None while it is healthy."""
    if lost := engine.lost_processes():
        return f"{', '.join(lost)} exited"
    if engine.dead:
        return "vLLM reports the engine dead"
    stalled = engine.seconds_without_progress()
    limit = stall_timeout if engine.has_stepped else max(stall_timeout, FIRST_STEP_GRACE_S)
    if stalled > limit:
        first = "" if engine.has_stepped else f", and {FIRST_STEP_GRACE_S} s for its first step"
        return (
            f"the engine made no progress for {stalled:.0f} s with {engine.unfinished_requests()} request(s) "
            f"in flight (ENGINE_STALL_TIMEOUT={stall_timeout:g}{first})"
        )
    return None


class Watchdog(threading.Thread):
    def __init__(
        self, engine: Engine, worker: Worker, stall_timeout: float, exit: Callable[[int], None] = os._exit
    ) -> None:
        super().__init__(name="tpworker-watchdog", daemon=True)
        self.engine, self.worker, self.stall_timeout, self._exit = engine, worker, stall_timeout, exit
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(CHECK_INTERVAL_S):
            try:
                problem = engine_problem(self.engine, self.stall_timeout)
            except Exception:  # a check that fails must not kill the watchdog
                log.exception("Watchdog check failed")
                continue
            if problem:
                self.fail(problem)
                return

    def fail(self, problem: str) -> None:
        log.error("The engine has failed: %s. Ending in-flight jobs with an error and exiting.", problem)
        self.worker.engine_failed(f"The engine failed ({problem}); this worker is restarting. Retry the request.")
        # Kill vLLM first: a hung rank would otherwise hold the others, and the jobs' errors do not
        # need the engine.
        self.engine.kill_processes()
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while self.worker.jobs_in_flight() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the job loop posts each job's error after the handler returns
        log.error("Exiting with status %d so that RunPod replaces this worker.", EXIT_ENGINE_FAILED)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._exit(EXIT_ENGINE_FAILED)
