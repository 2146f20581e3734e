"""vLLM's CPU worker, plus the memory its model load added to the rank's process. vLLM imports this
module by name (`worker_cls`, set by `tpworker bench` on CPU) in the rank processes only."""

from __future__ import annotations

import ctypes
import gc
from typing import Any

import psutil
from vllm.v1.worker.cpu_worker import CPUWorker


def _process_memory() -> int:
    """This process's resident memory, after returning freed heap pages to the system (so that
    what the load allocated and freed again does not count)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return psutil.Process().memory_info().rss


class MeasuredCPUWorker(CPUWorker):
    """On CPU vLLM packs linear weights into oneDNN buffers that are not torch tensors, so only the
    process's memory sees them (vLLM's GPU workers measure the load themselves)."""

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        before = _process_memory()
        super().load_model(*args, **kwargs)
        self.model_runner.model_memory_usage = _process_memory() - before
