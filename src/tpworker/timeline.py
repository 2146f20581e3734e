"""The start-up timeline of this process: each phase of a cold start with when it ended.

Marks come from the worker's own steps (settings read, plan checked, engine built, warm-up, first
job, first token) and from vLLM's own log records of its start (engine core up, weights loaded, KV
cache sized, compilation: vllm_bridge/start_records.py reads them). A phase lasts from the mark
before it to its own; all times are wall-clock (time.time()), because vLLM's records come from its
other processes. The origin is the process's start as the OS recorded it, which is where RunPod's
cold start begins too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Mark:
    phase: str  # what has just finished, e.g. "weights loaded"
    at: float  # time.time() when it finished
    detail: str = ""  # figures from the record, e.g. "0.27 GiB in 2.2 s, 0.12 GiB/s"


@dataclass(frozen=True)
class Phase:
    phase: str
    seconds: float  # since the mark before it
    ends_at: float  # seconds since the process began
    detail: str = ""


class StartTimeline:
    def __init__(self, began: float):
        self.began = began
        self._marks: list[Mark] = []
        self._lock = threading.Lock()  # the watchdog's and the job loop's threads may mark too

    def mark(self, phase: str, detail: str = "", at: float | None = None) -> None:
        with self._lock:
            self._marks.append(Mark(phase, time.time() if at is None else at, detail))

    def mark_once(self, phase: str, detail: str = "") -> bool:
        """Mark a phase that happens once per process (the first job, its first token). True if marked now."""
        with self._lock:
            if any(m.phase == phase for m in self._marks):
                return False
            self._marks.append(Mark(phase, time.time(), detail))
            return True

    def has(self, phase: str) -> bool:
        return any(m.phase == phase for m in self._marks)

    def phases(self) -> list[Phase]:
        """The marks in time order, each with its duration since the one before (the first since
        the process began)."""
        with self._lock:
            marks = sorted(self._marks, key=lambda m: m.at)
        out, previous = [], self.began
        for m in marks:
            out.append(Phase(m.phase, m.at - previous, m.at - self.began, m.detail))
            previous = max(previous, m.at)
        return out

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.phases()]

    def summary(self) -> str:
        """One line: each phase, its duration and figures, and when the last one ended."""
        phases = self.phases()
        if not phases:
            return "no phase recorded"
        parts = [f"{p.phase} {p.seconds:.2f} s" + (f" ({p.detail})" if p.detail else "") for p in phases]
        return f"{'; '.join(parts)}; {phases[-1].phase} at {phases[-1].ends_at:.1f} s since the process began"


def _process_start() -> float:
    try:
        return psutil.Process().create_time()
    except psutil.Error:  # the start is then this module's import, a little later than the process's
        return time.time()


# The timeline of this process (one start per process).
TIMELINE = StartTimeline(_process_start())


def mark(phase: str, detail: str = "", at: float | None = None) -> None:
    TIMELINE.mark(phase, detail, at)
