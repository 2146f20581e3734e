"""Load through `tpworker dev`: 200 jobs, streamed and not, of mixed lengths, at MAX_CONCURRENCY=16.
Every job completes with exactly its own output (greedy decoding in float32 is deterministic, so
each output is compared with the same request run alone), none is lost or duplicated, and the
worker's memory does not grow after the first 50 jobs."""

from __future__ import annotations

import itertools

import pytest

from conftest import RELIABILITY, DevEndpoint

pytestmark = pytest.mark.engine

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three colors:",
    "2 + 2 =",
    "Once upon a time",
    "The best way to learn Python is",
    "Translate 'hello' to Spanish:",
    "Name a planet:",
    "Why is the sky blue?",
    "A recipe for pancakes:",
]
LENGTHS = [4, 16, 40]
RSS_GROWTH_LIMIT = 64 * 2**20  # allocator noise is tens of MiB at most; a leak per job is more


def job_input(index: int) -> dict:
    prompt, length = PROMPTS[index % len(PROMPTS)], LENGTHS[index % len(LENGTHS)]
    return {
        "prompt": prompt,
        "stream": index % 2 == 0,
        "sampling_params": {"max_tokens": length, "temperature": 0, "ignore_eos": True},
    }


def text(status: dict) -> str:
    return "".join(piece for chunk in status["output"] for piece in chunk["choices"][0]["tokens"])


@pytest.fixture(scope="module")
def dev(limited_dev):
    return limited_dev  # MAX_CONCURRENCY=16, float32 (no GPU); its limits are above what these jobs ask


def rss(dev: DevEndpoint) -> int:
    """The worker's resident memory: handler.py and the vLLM processes under it."""
    worker = dev.worker_process()
    return sum(p.memory_info().rss for p in [worker, *worker.children(recursive=True)])


def test_200_jobs_at_concurrency_16_all_complete_with_their_own_output(dev):
    import httpx

    completed_before = httpx.get(f"{dev.url}/health").json()["jobs"]["completed"]  # the endpoint is shared
    # References: each distinct request alone (30 of them: 10 prompts x 3 lengths).
    references = {}
    for prompt, length in itertools.product(PROMPTS, LENGTHS):
        alone = dev.wait_status(
            dev.run({"prompt": prompt, "sampling_params": {"max_tokens": length, "temperature": 0, "ignore_eos": True}})
        )
        assert alone["status"] == "COMPLETED", alone
        references[prompt, length] = text(alone)

    def run_batch(indexes: range) -> list[str]:
        ids = {i: dev.run(job_input(i)) for i in indexes}
        wrong = []
        for i, job_id in ids.items():
            status = dev.wait_status(job_id, seconds=600)
            expected = references[PROMPTS[i % len(PROMPTS)], LENGTHS[i % len(LENGTHS)]]
            if status["status"] != "COMPLETED":
                wrong.append(f"job {i}: {status['status']} {status.get('error')}")
            elif text(status) != expected:
                wrong.append(f"job {i}: {text(status)!r} != {expected!r}")
            elif sum(c["usage"]["output"] for c in status["output"][-1:]) != LENGTHS[i % len(LENGTHS)]:
                wrong.append(f"job {i}: usage {status['output'][-1]['usage']}")
        return wrong

    wrong = run_batch(range(50))
    after_50 = rss(dev)
    wrong += run_batch(range(50, 200))
    after_200 = rss(dev)

    counts = httpx.get(f"{dev.url}/health").json()["jobs"]
    completed = counts["completed"] - completed_before
    lost = sum(1 for line in wrong if "COMPLETED" not in line and "!=" not in line)
    duplicated = sum(1 for line in wrong if "!=" in line)  # a repeated or foreign chunk changes the text
    RELIABILITY["load"].append((200 - len(wrong), lost, duplicated))
    assert not wrong, "\n".join(wrong[:20])
    assert counts["inProgress"] == 0 and counts["inQueue"] == 0, counts
    assert completed == 230, counts  # 30 references + 200: each job finished exactly once
    print(f"worker RSS after 50 jobs: {after_50 / 2**20:.0f} MiB, after 200: {after_200 / 2**20:.0f} MiB")
    assert after_200 - after_50 < RSS_GROWTH_LIMIT, (after_50, after_200)
