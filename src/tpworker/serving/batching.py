"""When a streamed chunk leaves, for both job forms (native tokens, OpenAI SSE events).

RunPod posts every yield over HTTP before the handler resumes, so each chunk costs a POST; a user
watching a stream wants the tokens as they are made. Two policies:

- paced (the default): the first chunk leaves as soon as the first output is ready, each next one
  once STREAM_INTERVAL_MS has passed since the last left, holding everything made meanwhile. A
  stream is never silent for longer than the interval plus one engine step, and costs at most
  1000 / STREAM_INTERVAL_MS posts a second, whatever the model's speed.
- counted (worker-vllm's): the first chunk holds MIN_BATCH_SIZE tokens (events), each next one
  BATCH_SIZE_GROWTH_FACTOR times more, up to DEFAULT_BATCH_SIZE. Chosen when any of these is set
  and STREAM_INTERVAL_MS is not, when STREAM_INTERVAL_MS=0, and for a job that sets
  max_batch_size, min_batch_size or batch_size_growth_factor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from tpworker.config.variables import WorkerSettings

Item = TypeVar("Item")
COUNTED_SETTINGS = frozenset({"default_batch_size", "min_batch_size", "batch_size_growth_factor"})


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int
    min_size: int
    growth_factor: float
    interval: float | None = None  # seconds between chunks (paced); None: counted

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> BatchPolicy:
        interval_ms = settings.stream_interval_ms
        if "stream_interval_ms" not in settings.model_fields_set and COUNTED_SETTINGS & settings.model_fields_set:
            interval_ms = 0  # a worker-vllm user's count-based settings keep their meaning
        return cls(
            settings.default_batch_size,
            min(settings.min_batch_size, settings.default_batch_size),
            settings.batch_size_growth_factor,
            interval_ms / 1000 if interval_ms else None,
        )

    def for_job(self, max_size: int | None, min_size: int | None, growth_factor: float | None) -> BatchPolicy:
        """This policy with a job's own count-based overrides, which make it counted (a minimum above the
        maximum is lowered to it); a job that sets none keeps the worker's policy."""
        if max_size is None and min_size is None and growth_factor is None:
            return self
        policy = BatchPolicy(max_size or self.max_size, min_size or self.min_size, growth_factor or self.growth_factor)
        return replace(policy, min_size=policy.max_size) if policy.min_size > policy.max_size else policy

    def sizes(self) -> Iterator[float]:
        """Counted: the size of each chunk in turn (kept fractional, as worker-vllm does, so that factors
        like 1.5 still grow)."""
        size: float = self.min_size
        while True:
            yield size
            size = min(size * self.growth_factor, self.max_size)


async def chunks(
    source: AsyncIterator[Item], policy: BatchPolicy, size_of: Callable[[Item], int]
) -> AsyncGenerator[list[Item], None]:
    """The items of `source` grouped into chunks by `policy` (size_of: tokens or events in an item).
    Closing this generator closes the source (an engine request is then aborted)."""
    grouped = _counted(source, policy, size_of) if policy.interval is None else _paced(source, policy.interval)
    async with contextlib.aclosing(grouped) as groups:
        async for group in groups:
            yield group


async def _counted(
    source: AsyncIterator[Item], policy: BatchPolicy, size_of: Callable[[Item], int]
) -> AsyncGenerator[list[Item], None]:
    sizes = policy.sizes()
    group: list[Item] = []
    size, count = next(sizes), 0
    try:
        async for item in source:
            group.append(item)
            count += size_of(item)
            if count >= size:
                yield group
                group, count, size = [], 0, next(sizes)
        if group:
            yield group
    finally:
        await _close(source)


async def _paced(source: AsyncIterator[Item], interval: float) -> AsyncGenerator[list[Item], None]:
    """A reader task takes items as soon as they are made (so several made at once leave together),
    while this generator hands them over at most once per `interval`, and at once when the source ends."""
    loop = asyncio.get_running_loop()
    ready: list[Item] = []
    arrived, ended = asyncio.Event(), asyncio.Event()
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for item in source:
                ready.append(item)
                arrived.set()
        except Exception as error:  # the engine's or the route's: raised to the job below
            failure.append(error)
        finally:
            ended.set()
            arrived.set()

    reader = asyncio.create_task(read())
    last_sent: float | None = None
    try:
        while True:
            await arrived.wait()
            if last_sent is not None and (wait := last_sent + interval - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), wait)  # the interval, cut short by the end
            arrived.clear()
            group, ready[:] = list(ready), []
            if group:
                last_sent = loop.time()
                yield group
            if failure:
                raise failure[0]
            if ended.is_set() and not ready:
                return
    finally:
        reader.cancel()  # mid-read, the source sees the cancellation (vLLM aborts its request)
        await asyncio.gather(reader, return_exceptions=True)
        await _close(source)


async def _close(source: AsyncIterator[object]) -> None:
    if (aclose := getattr(source, "aclose", None)) is not None:
        await aclose()
