"""vLLM's start failures read as the worker reads them (vllm_bridge/start_failures.py): the messages are made
by vLLM's own functions where they can be called without a GPU, and checked against vLLM's source where
they cannot, so an upgrade that rewords one fails here. The retry they lead to runs on the real engine in
tests/test_refused_start.py."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from tpworker.vllm_bridge.start_failures import memory_fix, restart_may_fix

GIB = 1024**3


def vllm_error(call) -> str:
    """The exception vLLM raises, as the start records keep it ('ValueError: ...')."""
    with pytest.raises(Exception) as raised:
        call()
    return f"{type(raised.value).__name__}: {' '.join(str(raised.value).split())}"


def kv_cache_too_small(available: int, needed: int, fits: int) -> str:
    from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory

    return vllm_error(lambda: _check_enough_kv_cache_memory(available, lambda: needed, 32768, lambda memory: fits))


def test_a_kv_cache_too_small_for_max_model_len_lowers_max_model_len_to_what_it_holds():
    failure = kv_cache_too_small(available=2 * GIB, needed=8 * GIB, fits=8192)
    fix = memory_fix(failure)
    assert (fix.argument, fix.value) == ("max_model_len", 8192)
    assert "8192" in fix.why and "32768" in fix.why
    assert not restart_may_fix(failure)


def test_no_estimate_means_no_retry_and_no_memory_at_all_means_no_retry():
    assert memory_fix(kv_cache_too_small(available=GIB, needed=8 * GIB, fits=0)) is None
    failure = kv_cache_too_small(available=0, needed=GIB, fits=0)
    assert "No available memory for the cache blocks" in failure
    assert memory_fix(failure) is None and not restart_may_fix(failure)


def test_less_free_memory_than_gpu_memory_utilization_lowers_the_utilization_to_what_is_free():
    from vllm.v1.worker.utils import request_memory

    snapshot = SimpleNamespace(total_memory=80 * GIB, free_memory=60 * GIB, device_="cuda:0")
    failure = vllm_error(lambda: request_memory(snapshot, SimpleNamespace(gpu_memory_utilization=0.92)))
    fix = memory_fix(failure)
    assert fix.argument == "gpu_memory_utilization" and fix.value == 0.74  # 60/80 less a margin
    assert not restart_may_fix(failure)


def test_a_sampler_warm_up_out_of_memory_halves_max_num_seqs():
    from vllm.v1.worker import gpu_model_runner

    source = inspect.getsource(gpu_model_runner)
    assert "CUDA out of memory occurred when warming up sampler with " in source  # the words matched below
    failure = (
        "RuntimeError: CUDA out of memory occurred when warming up sampler with 1024 dummy requests. Please try "
        "lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine."
    )
    fix = memory_fix(failure)
    assert (fix.argument, fix.value) == ("max_num_seqs", 512)
    assert not restart_may_fix(failure)


def test_weights_that_do_not_fit_are_not_retried_and_a_dead_process_is():
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB."
    assert memory_fix(oom) is None and not restart_may_fix(oom)
    died = "RuntimeError: NCCL error: unhandled system error"
    assert memory_fix(died) is None and restart_may_fix(died)
    assert restart_may_fix(None)  # nothing logged: a process that was killed
