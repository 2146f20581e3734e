"""The CPU a process tree uses, and a wait until it is back near idle: `tpworker bench --fairness` waits for the
worker and vLLM's processes to be quiet before each scenario (a cancelled request's work may go on inside the
engine)."""

from __future__ import annotations

import asyncio
import time

now = time.perf_counter

IDLE_CORES = 0.1  # a worker using less CPU than this is idle


class CpuQuiet:
    """The dev server's process tree (worker, vLLM's processes): CPU cores used, and waiting until that is
    back near what it used idle (a cancelled request's work may go on inside the engine)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root, self.idle_cores = psutil.Process(pid), 0.0

    def _times(self) -> dict[int, float]:
        import psutil

        times: dict[int, float] = {}
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                cpu = process.cpu_times()
                times[process.pid] = cpu.user + cpu.system
            except psutil.Error:
                pass
        return times

    async def cores(self, seconds: float = 2.0) -> float:
        before, began = self._times(), now()
        await asyncio.sleep(seconds)
        after = self._times()
        return sum(after[p] - before[p] for p in after.keys() & before.keys()) / (now() - began)

    async def __call__(self, seconds: float) -> bool:
        deadline = now() + seconds
        while now() < deadline:
            if await self.cores() <= self.idle_cores + 0.25:
                return True
        return False
