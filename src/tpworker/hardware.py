"""What the machine has: visible GPUs (through NVML, without initialising CUDA in this process,
which would force vLLM's workers to be spawned rather than forked) and CPU cores."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int  # index among the visible GPUs (what CUDA calls device N)
    name: str
    memory_bytes: int


def select_visible(cuda_visible_devices: str | None, uuids: list[str]) -> list[int]:
    """Physical indices of the GPUs CUDA_VISIBLE_DEVICES leaves visible, in CUDA's order.

    `uuids` are the physical GPUs' UUIDs. Unset means every GPU. Entries are indices or UUIDs
    (a unique prefix is enough); like CUDA, the first entry that names no GPU ends the list."""
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            index = int(entry)
        else:
            matches = [i for i, u in enumerate(uuids) if entry and u.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break
        chosen.append(index)
    return chosen


def visible_gpus(cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs this process may use; [] where there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        return [
            Gpu(
                visible_index,
                _text(pynvml.nvmlDeviceGetName(handles[i])),
                int(pynvml.nvmlDeviceGetMemoryInfo(handles[i]).total),
            )
            for visible_index, i in enumerate(select_visible(cuda_visible_devices, uuids))
        ]
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def usable_cpus() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the format VLLM_CPU_OMP_THREADS_BIND takes)."""
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def cpu_threads_binding(ranks: int, cpus: list[int]) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND giving each CPU rank its own equal share of the cores
    ('0|1' for 2 ranks on 2 cores, '0-3|4-7' for 2 on 8); 'nobind' when there are fewer cores than
    ranks (it runs, oversubscribed and slow). None for one rank: vLLM's own default suits it."""
    if ranks <= 1:
        return None
    if len(cpus) < ranks:
        return "nobind"
    share = len(cpus) // ranks
    return "|".join(_ranges(cpus[r * share : (r + 1) * share]) for r in range(ranks))
