"""When streamed chunks leave (serving/batching.py), without an engine: the policy the settings and a
job choose, counted chunks' sizes, and paced chunks' timing, on sources that make items at chosen times.

The paced tests assert what the pacer itself decides (it never hands a chunk over sooner than the interval
after the last, and everything made meanwhile goes in it), not how long this machine takes to do it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tpworker.config.variables import WorkerSettings
from tpworker.serving.batching import BatchPolicy, chunks

COUNTED = BatchPolicy(max_size=50, min_size=1, growth_factor=3)


def test_the_default_is_paced_at_50_ms_and_count_settings_alone_keep_worker_vllms_counting():
    assert BatchPolicy.from_settings(WorkerSettings()) == BatchPolicy(50, 1, 3, interval=0.05)
    assert BatchPolicy.from_settings(WorkerSettings(stream_interval_ms=20)).interval == 0.02
    assert BatchPolicy.from_settings(WorkerSettings(stream_interval_ms=0)).interval is None
    worker_vllm_user = BatchPolicy.from_settings(WorkerSettings(default_batch_size=10, min_batch_size=2))
    assert worker_vllm_user == BatchPolicy(10, 2, 3, interval=None)
    both = WorkerSettings(default_batch_size=10, stream_interval_ms=100)  # the interval, when set, decides
    assert BatchPolicy.from_settings(both).interval == 0.1


def test_a_job_that_sets_a_batch_size_is_counted_and_one_that_sets_none_keeps_the_workers_policy():
    paced = BatchPolicy(50, 1, 3, interval=0.05)
    assert paced.for_job(None, None, None) is paced
    assert paced.for_job(10, 2, None) == BatchPolicy(10, 2, 3, interval=None)
    assert paced.for_job(4, 9, None) == BatchPolicy(4, 4, 3)  # a minimum above the maximum is lowered to it


def test_counted_sizes_grow_by_the_factor_up_to_the_maximum():
    assert list(itertools.islice(COUNTED.sizes(), 7)) == [1, 3, 9, 27, 50, 50, 50]
    assert list(itertools.islice(BatchPolicy(10, 1, 1.5).sizes(), 6)) == [1, 1.5, 2.25, 3.375, 5.0625, 7.59375]


async def made_at(times: list[float], log: list | None = None):
    """Items 0, 1, ... made `times` seconds after the start (equal times: made together)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for index, when in enumerate(times):
            if (wait := start + when - loop.time()) > 0:
                await asyncio.sleep(wait)
            yield index
    finally:
        if log is not None:
            log.append("closed")


async def collect(source, policy: BatchPolicy, size_of=lambda item: 1) -> list[tuple[float, list]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    return [(loop.time() - start, group) async for group in chunks(source, policy, size_of)]


def test_counted_chunks_of_tokens_and_the_rest_at_the_end():
    groups = asyncio.run(collect(made_at([0.0] * 20), BatchPolicy(8, 2, 2)))
    assert [len(group) for _, group in groups] == [2, 4, 8, 6]
    # items holding several tokens each (size_of), as vLLM hands over several at once to a slow reader
    groups = asyncio.run(collect(made_at([0.0] * 6), BatchPolicy(8, 2, 2), size_of=lambda item: 3))
    assert [len(group) for _, group in groups] == [1, 2, 3]


def test_paced_the_first_item_leaves_at_once_and_items_made_together_leave_together():
    groups = asyncio.run(collect(made_at([0.0, 0.0, 0.0, 0.3, 0.3]), BatchPolicy(50, 1, 3, interval=0.1)))
    assert [group for _, group in groups] == [[0, 1, 2], [3, 4]]


def test_paced_chunks_leave_no_sooner_than_the_interval_and_hold_everything_made_meanwhile():
    interval = 0.05
    times = [i * 0.005 for i in range(100)]  # a token every 5 ms for 0.5 s: 10 tokens per interval
    groups = asyncio.run(collect(made_at(times), BatchPolicy(50, 1, 3, interval=interval)))
    items = [item for _, group in groups for item in group]
    assert items == list(range(100))  # nothing lost, nothing reordered
    assert groups[0][1] == [0]  # the first token alone, at once
    sent = [when for when, _ in groups]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps[:-1]) >= interval * 0.99  # (the last leaves when the stream ends, sooner if it must)
    assert len(groups) <= 0.5 / interval + 2  # about one chunk per interval, not one per token
    assert max(len(group) for _, group in groups) > 1


def test_paced_a_slow_source_gets_a_chunk_per_item():
    """Items further apart than the interval each leave as soon as they are made."""
    groups = asyncio.run(collect(made_at([0.0, 0.12, 0.24, 0.36]), BatchPolicy(50, 1, 3, interval=0.05)))
    assert [group for _, group in groups] == [[0], [1], [2], [3]]


def test_paced_the_last_chunk_leaves_when_the_source_ends_not_an_interval_later():
    groups = asyncio.run(collect(made_at([0.0, 0.01]), BatchPolicy(50, 1, 3, interval=5.0)))
    assert [group for _, group in groups] == [[0], [1]]
    assert groups[-1][0] < 1.0


@pytest.mark.parametrize("interval", [None, 0.05], ids=["counted", "paced"])
def test_a_failing_source_raises_to_the_job_after_what_it_made(interval):
    async def failing():
        yield 1
        await asyncio.sleep(0.01)
        raise ValueError("the engine failed")

    async def run():
        seen = []
        with pytest.raises(ValueError, match="the engine failed"):
            async for group in chunks(failing(), BatchPolicy(50, 1, 3, interval=interval), lambda item: 1):
                seen.extend(group)
        return seen

    assert asyncio.run(run()) == [1]


@pytest.mark.parametrize("interval", [None, 0.05], ids=["counted", "paced"])
def test_closing_the_chunks_closes_the_source(interval):
    """A cancelled job closes its stream: the source (the engine request) is closed at once."""

    async def run():
        log = []
        groups = chunks(made_at([0.0, 0.0, 10.0], log), BatchPolicy(1, 1, 1, interval=interval), lambda item: 1)
        assert await anext(groups) in ([0], [0, 1])
        await groups.aclose()
        return log

    assert asyncio.run(run()) == ["closed"]
