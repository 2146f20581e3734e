"""How long a start will take, estimated before it begins, against RunPod's init timeout.

RunPod marks a worker unhealthy when it has not started within RUNPOD_INIT_TIMEOUT seconds (7 minutes
unless the endpoint raises it). The estimate is the weights read once from where they are (every rank
reads its shard from the same storage, so the storage's speed bounds the whole read) plus an allowance
for the rest of a start: the process, vLLM's import, the engine's processes, KV-cache profiling and,
unless the engine runs eager, compilation and CUDA-graph capture. The read speed is measured at start
(baked weights, a volume, a folder) or given (`tpworker plan --read-speed`); the allowances are stated
next to the figure, because they depend on the GPU and the model more than anything the plan knows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tpworker.planning.memory import GB

RUNPOD_INIT_TIMEOUT_S = 420  # RunPod's default: 7 minutes
# Process start, vLLM's import, engine processes and NCCL, KV-cache profiling: tens of seconds each on a
# GPU worker (a published TP=2 start of a 70B model, a slow one: NCCL 30 s, profiling 131 s).
ENGINE_ALLOWANCE_S = 60.0
# torch.compile and CUDA-graph capture when they run (the same start: compile 166 s, graphs ~90 s; vLLM's
# own measurements of a warm compile cache: 27 s to 4 s, 60 s to 6 s).
COMPILE_ALLOWANCE_S = 120.0
WARN_AT = 0.8  # of the timeout
SAMPLE_BYTES = 512 * 2**20  # read to measure a folder's speed (and left in the page cache for the load)


@dataclass(frozen=True)
class StartEstimate:
    weight_bytes: int
    read_bytes_per_s: float
    read_source: str  # where the speed comes from, in words
    compiles: bool

    @property
    def read_s(self) -> float:
        return self.weight_bytes / self.read_bytes_per_s

    @property
    def seconds(self) -> float:
        return self.read_s + ENGINE_ALLOWANCE_S + (COMPILE_ALLOWANCE_S if self.compiles else 0.0)

    def describe(self) -> str:
        parts = [
            f"weights {self.weight_bytes / GB:,.1f} GB at {self.read_bytes_per_s / GB:.2f} GB/s "
            f"({self.read_source}): {self.read_s:,.0f} s",
            f"engine start and KV-cache profiling, allowed: {ENGINE_ALLOWANCE_S:.0f} s",
        ]
        if self.compiles:
            parts.append(
                f"compilation and CUDA graphs, allowed: {COMPILE_ALLOWANCE_S:.0f} s (ENFORCE_EAGER skips them)"
            )
        return f"about {self.seconds / 60:.1f} min ({'; '.join(parts)})"


def against_timeout(estimate: StartEstimate, timeout_s: float, timeout_source: str) -> tuple[str, bool]:
    """A sentence comparing the estimate with the init timeout, and whether it is a warning."""
    limit = f"RunPod's init timeout of {timeout_s / 60:.1f} min ({timeout_source})"
    if estimate.seconds < WARN_AT * timeout_s:
        return f"Start estimate: {estimate.describe()}, within {limit}.", False
    advice = (
        f"Raise RUNPOD_INIT_TIMEOUT on the endpoint to at least {int(estimate.seconds * 1.5)} s, or make the start "
        "shorter: weights baked into the image or cached on the volume read faster than a download."
    )
    verb = "exceeds" if estimate.seconds >= timeout_s else "comes close to"
    return f"Start estimate: {estimate.describe()}, which {verb} {limit}. {advice}", True


def measure_read_speed(folder: Path, sample_bytes: int = SAMPLE_BYTES) -> float | None:
    """Bytes per second reading the folder's weight files from the start, up to `sample_bytes` (None:
    no weights, or too little to time). What a cold page cache gives is the storage's speed; a warm one
    gives memory's, and the load will be as fast."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    done, began = 0, time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as stream:
            while done < sample_bytes and (block := stream.read(16 * 2**20)):
                done += len(block)
        if done >= sample_bytes:
            break
    seconds = time.perf_counter() - began
    return done / seconds if done >= 2**20 and seconds > 0 else None


def timeout_source(seconds: int, set_by_user: bool) -> str:
    """Where the start's time limit comes from, in the words every report of it uses."""
    return f"RUNPOD_INIT_TIMEOUT={seconds}" + ("" if set_by_user else ", RunPod's default")
