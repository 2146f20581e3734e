"""What the machine has: visible GPUs (through NVML, without initialising CUDA in this process,
which would force vLLM's workers to be spawned rather than forked) and CPU cores."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _nvml(nvml: Any = None) -> Any:
    """The NVML module, initialised; None where there is no NVIDIA driver."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    return nvml


def _visible_handles(nvml: Any, cuda_visible_devices: str | None) -> list[Any]:
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    return [handles[i] for i in select_visible(cuda_visible_devices, uuids)]


def visible_gpus(cuda_visible_devices: str | None, nvml: Any = None) -> list[Gpu]:
    """The GPUs this process may use; [] where there is no NVIDIA driver."""
    nvml = _nvml(nvml)
    if nvml is None:
        return []
    try:
        return [
            Gpu(i, _text(nvml.nvmlDeviceGetName(h)), int(nvml.nvmlDeviceGetMemoryInfo(h).total))
            for i, h in enumerate(_visible_handles(nvml, cuda_visible_devices))
        ]
    finally:
        nvml.nvmlShutdown()


# NVML's P2P capability indices and status (the binding's own READ constant is a tuple by mistake).
P2P_READ, P2P_NVLINK, P2P_OK = 0, 2, 0


@dataclass(frozen=True)
class Link:
    """How two visible GPUs reach each other."""

    a: int
    b: int
    nvlink: bool  # NVLink (or NVSwitch) between them
    p2p: bool  # direct peer-to-peer reads work (over NVLink or PCIe)


def gpu_links(cuda_visible_devices: str | None, count: int, nvml: Any = None) -> list[Link]:
    """Links between each pair of the first `count` visible GPUs (the ones TP uses)."""
    nvml = _nvml(nvml)
    if nvml is None:
        return []
    try:
        handles = _visible_handles(nvml, cuda_visible_devices)[:count]

        def status(x: Any, y: Any, index: int) -> bool:
            try:
                code: int = nvml.nvmlDeviceGetP2PStatus(x, y, index)
                return code == P2P_OK
            except nvml.NVMLError:
                return False

        return [
            Link(i, j, status(handles[i], handles[j], P2P_NVLINK), status(handles[i], handles[j], P2P_READ))
            for i in range(len(handles))
            for j in range(i + 1, len(handles))
        ]
    finally:
        nvml.nvmlShutdown()


def shm_bytes(path: str = "/dev/shm") -> int | None:
    """Size of the shared-memory mount NCCL uses between ranks (None if there is none)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_blocks * stats.f_frsize


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# The vector extensions vLLM's CPU kernels choose between: with AMX, bfloat16 linear layers and attention run
# other kernels than with AVX-512 alone, and round differently (README, "Known issues").
VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_vector_extensions() -> list[str]:
    """Which of VECTOR_EXTENSIONS this CPU has (its /proc/cpuinfo flags)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [name for name in VECTOR_EXTENSIONS if name in flags]


def describe_cpu() -> str:
    """E.g. 'AMD EPYC (avx2, avx512f, avx512_bf16)': what a CPU result depends on."""
    return f"{cpu_model()} ({', '.join(cpu_vector_extensions()) or 'no AVX2/AVX-512/AMX'})"


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


def network_interface(ip: str) -> str | None:
    """The name of the network interface that holds `ip` (None if none here does)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addresses):
            return name
    return None
