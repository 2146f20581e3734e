"""The worker's life as one state machine, the one place that says whether the worker serves:

    starting -> warming up -> serving -> draining -> stopped
        |                        \\______________/^
        +-> refused -> stopped       (an engine that fails: stopped from any live state)

The event loop that serves jobs owns it: a change asked for from another thread (the watchdog, a signal
handler, the start in the main thread before the loop runs) is posted to that loop, so that jobs, the job
loop and a future health route always read one consistent state. Every change is logged. A job asks
`refusal()` before it runs: None while the worker takes jobs, else the error to answer with.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable

from tpworker.serving.job_errors import JobError, service_unavailable

log = logging.getLogger(__name__)


class State(enum.Enum):
    STARTING = "starting"  # settings, plan, model, engine: no job can run yet
    WARMING_UP = "warming up"  # the engine is up; the warm-up request runs before the first job
    SERVING = "serving"
    DRAINING = "draining"  # SIGTERM: jobs in flight finish within the grace; no new job is taken
    STOPPED = "stopped"  # the engine has stopped (failed, or shut down): no job can run
    REFUSED = "refused"  # the start was refused for good: every job is answered with the cause


# What each state may become. STOPPED is final; REFUSED only ends with the process.
TRANSITIONS = {
    State.STARTING: {State.WARMING_UP, State.SERVING, State.REFUSED, State.DRAINING, State.STOPPED},
    State.WARMING_UP: {State.SERVING, State.DRAINING, State.STOPPED},
    State.SERVING: {State.DRAINING, State.STOPPED},
    State.DRAINING: {State.STOPPED},
    State.REFUSED: {State.STOPPED},
    State.STOPPED: set(),
}
TAKES_JOBS = frozenset({State.STARTING, State.WARMING_UP, State.SERVING, State.DRAINING})


class TransitionError(RuntimeError):
    """A change the state machine does not allow: a bug in the caller, never a job's fault."""


class Lifecycle:
    def __init__(self) -> None:
        self.state = State.STARTING
        self.reason = "the worker is starting"
        self._error: JobError | None = None  # what a job gets while the worker takes none
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[State, JobError | None], None]] = []
        self._changed = threading.Condition()

    # ---- reading (any thread)

    def refusal(self) -> JobError | None:
        """None while a job may run (jobs taken before a drain finish; RunPod takes no new one then),
        else the error a new job is answered with."""
        if self.state in TAKES_JOBS:
            return None
        return self._error or service_unavailable(f"The worker is {self.state.value}. Retry the request.")

    @property
    def serving(self) -> bool:
        return self.state is State.SERVING

    def wait_for(self, states: set[State], timeout: float | None = None) -> bool:
        """Block this (non-loop) thread until the state is one of `states`; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.state in states, timeout)

    # ---- changing

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on the state belongs to `loop`: changes asked for elsewhere are posted to it."""
        self._loop = loop

    def on_change(self, listener: Callable[[State, JobError | None], None]) -> None:
        """`listener(new state, its error)` is called after every change, in the owning loop's thread."""
        self._listeners.append(listener)

    def post(self, state: State, reason: str, error: JobError | None = None) -> None:
        """Ask for a change from any thread. Applied now in the owner's thread (or before a loop owns
        it, when only the starting thread runs), else posted to the owning loop."""
        loop = self._loop
        if loop is None or _in_thread_of(loop):
            self._apply(state, reason, error)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._apply, state, reason, error)
        else:  # the loop has ended: no job can be in flight any more
            self._apply(state, reason, error)

    def _apply(self, state: State, reason: str, error: JobError | None) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            if self.state is State.STOPPED:
                return  # already stopped: a late drain or failure changes nothing
            raise TransitionError(f"the worker cannot go from {self.state.value} to {state.value} ({reason})")
        previous, self.state, self.reason, self._error = self.state, state, reason, error
        level = logging.ERROR if state in (State.REFUSED, State.STOPPED) and error is not None else logging.INFO
        log.log(level, "Worker state: %s -> %s: %s", previous.value, state.value, reason)
        with self._changed:
            self._changed.notify_all()
        for listener in self._listeners:
            listener(state, error)


def _in_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
