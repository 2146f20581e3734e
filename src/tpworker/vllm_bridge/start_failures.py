"""Why vLLM's engine did not start, read from the exception its process logged (start_records.failure):
whether a restart could help, and, when the KV cache or memory did not suffice, which setting to lower and
to what (the one vLLM's own message points to). The texts are vLLM 0.32's: tests/test_start_failures.py
holds them as vLLM words them and checks that they are still in vLLM's source, so an upgrade that rewords
one fails a test rather than a start.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# vllm/v1/core/kv_cache_utils.py: the KV cache cannot hold one request of max_model_len.
KV_CACHE_TOO_SMALL = re.compile(
    r"To serve at least one request with the model's max seq len \((?P<needed>\d+)\)"
    r"(?:.*?the estimated maximum model length is (?P<fits>\d+))?"
)
# ...and nothing is left for it at all once the weights are loaded.
NO_KV_CACHE_MEMORY = re.compile(r"No available memory for the cache blocks")
# vllm/v1/worker/utils.py: less GPU memory is free than GPU_MEMORY_UTILIZATION asks for.
FREE_BELOW_UTILIZATION = re.compile(
    r"Free memory on device \S+ \((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup is less than desired "
    r"GPU memory utilization \((?P<asked>[\d.]+),"
)
# vllm/v1/worker/gpu_model_runner.py: the sampler's (or pooler's) warm-up at MAX_NUM_SEQS ran out of memory.
WARM_UP_OUT_OF_MEMORY = re.compile(
    r"out of memory occurred when warming up (?:sampler|pooler \(task=[^)]*\)) with (?P<requests>\d+) dummy requests"
)
# Any other out-of-memory error (torch's, while loading the weights): the model does not fit.
OUT_OF_MEMORY = re.compile(r"OutOfMemoryError|out of memory", re.IGNORECASE)

MEMORY_PATTERNS = (KV_CACHE_TOO_SMALL, NO_KV_CACHE_MEMORY, FREE_BELOW_UTILIZATION, WARM_UP_OUT_OF_MEMORY, OUT_OF_MEMORY)
LOWEST_UTILIZATION = 0.05  # below this a retry would not serve anything


@dataclass(frozen=True)
class MemoryFix:
    """One engine argument to lower for a second start, and why, in words."""

    argument: str  # max_model_len | gpu_memory_utilization | max_num_seqs
    value: int | float
    why: str


def restart_may_fix(failure: str | None) -> bool:
    """A start that failed for want of memory fails again the same way; anything else (a process that died,
    a device error) may not."""
    return not (failure and any(pattern.search(failure) for pattern in MEMORY_PATTERNS))


def memory_fix(failure: str | None) -> MemoryFix | None:
    """The setting vLLM's message points to, lowered to what it says fits; None when the message names
    nothing a lower setting fixes."""
    if not failure:
        return None
    if (found := KV_CACHE_TOO_SMALL.search(failure)) and found["fits"] and int(found["fits"]) > 0:
        fits, needed = int(found["fits"]), int(found["needed"])
        return MemoryFix("max_model_len", fits, f"the KV cache holds {fits} tokens, not {needed}")
    if found := FREE_BELOW_UTILIZATION.search(failure):
        free, total, asked = float(found["free"]), float(found["total"]), float(found["asked"])
        value = math.floor((free / total - 0.01) * 100) / 100  # what is free, less a margin for rounding
        if LOWEST_UTILIZATION <= value < asked:
            return MemoryFix(
                "gpu_memory_utilization", value, f"{free:g} of {total:g} GiB were free on the GPU, not {asked:g}"
            )
    if found := WARM_UP_OUT_OF_MEMORY.search(failure):
        requests = int(found["requests"])
        if requests > 1:
            return MemoryFix("max_num_seqs", requests // 2, f"warming up {requests} requests at once ran out of memory")
    return None
