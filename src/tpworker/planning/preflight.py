"""Checks at start, once the plan is made and before the engine loads anything.

Refusals are for what cannot work whatever vLLM measures at start: weights larger than a GPU, or no
room for one request of MAX_MODEL_LEN even with nothing reserved for activations. Where only the
planner's runtime estimate makes it tight, a warning says so and the worker goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tpworker.errors import StartRefused
from tpworker.planning.hardware import Link
from tpworker.planning.memory import GB, RUNTIME_RESERVE_BYTES, GiB, MemoryModel, capacity
from tpworker.planning.parallel import valid_tp_sizes

# Below this, NCCL's shared-memory transport between ranks can fail ("Bus error", "unhandled system
# error"); Docker's default is 64 MiB.
MIN_SHM_BYTES = 1 * GiB


class PreflightError(StartRefused):
    """The plan cannot work on this machine; the message says what to change."""


@dataclass
class Findings:
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def memory_findings(
    memory: MemoryModel,
    tp: int,
    pp: int,
    gpu_bytes: float,
    utilization: float,
    max_model_len: int,
    max_concurrency: int,
    gpu_count: int,
) -> Findings:
    """The memory plan of one rank; raises PreflightError when it cannot fit."""
    found = Findings()
    rank = memory.rank(tp, pp)
    cap = capacity(rank, gpu_bytes, utilization, max_model_len)
    fits_somewhere = [
        size
        for size in valid_tp_sizes(memory.facts, up_to=max(gpu_count // pp, 1))
        if memory.rank(size, pp).weight_bytes <= gpu_bytes * utilization
    ]
    where = f"{_gb(gpu_bytes)} GPU x GPU_MEMORY_UTILIZATION {utilization} = {_gb(cap.usable_bytes)} usable"
    if not cap.weights_fit:
        fix = (
            f"Use TENSOR_PARALLEL_SIZE={fits_somewhere[-1]}"
            if fits_somewhere and fits_somewhere[-1] > tp
            else "Use a worker with more GPUs, or a quantized model (e.g. QUANTIZATION=fp8)"
        )
        raise PreflightError(
            f"The weights need {_gb(rank.weight_bytes)} per GPU at TP={tp} x PP={pp}, more than the {where}. {fix}."
        )
    optimistic = capacity(rank, gpu_bytes, utilization, max_model_len, reserve_bytes=0)
    if not optimistic.fits_one_sequence:
        raise PreflightError(
            f"After {_gb(rank.weight_bytes)} of weights per GPU ({where}), the KV cache holds at most "
            f"{optimistic.kv_tokens:,} tokens, fewer than one request of MAX_MODEL_LEN={max_model_len:,}. "
            f"Lower MAX_MODEL_LEN, set KV_CACHE_DTYPE=fp8, raise GPU_MEMORY_UTILIZATION, or use more GPUs."
        )
    source = "the weights' real size" if memory.from_real_size else "an estimate from config.json"
    found.notes.append(
        f"Memory per GPU at TP={tp} x PP={pp}: {_gb(rank.weight_bytes)} of weights ({source}), "
        f"{rank.kv_bytes_per_token / 1024:.0f} KiB of KV cache per token; about {cap.kv_tokens:,} tokens "
        f"of KV cache fit = {cap.sequences_at_max_len:.1f} requests of MAX_MODEL_LEN={max_model_len:,}."
    )
    if not cap.fits_one_sequence:
        found.warnings.append(
            f"Tight: after the ~{RUNTIME_RESERVE_BYTES / GiB:.0f} GiB vLLM needs for activations, "
            f"only ~{cap.kv_tokens:,} tokens of KV cache may fit, less than MAX_MODEL_LEN={max_model_len:,}; "
            "vLLM will refuse at start if so. "
            f"Lower MAX_MODEL_LEN or use more GPUs."
        )
    elif cap.sequences_at_max_len < max_concurrency:
        found.warnings.append(
            f"Only ~{int(cap.sequences_at_max_len)} requests of MAX_MODEL_LEN={max_model_len:,} fit in the KV "
            f"cache at once, fewer than MAX_CONCURRENCY={max_concurrency}: longer requests will wait. "
            f"Lower MAX_MODEL_LEN or MAX_CONCURRENCY, or use more GPUs."
        )
    return found


def interconnect_findings(tp: int, links: list[Link], shm: int | None) -> Findings:
    """Warnings (never refusals) about how the ranks will talk."""
    found = Findings()
    if tp <= 1:
        return found
    pcie = [link for link in links if not link.nvlink]
    if links and pcie:
        pairs = ", ".join(f"{link.a}-{link.b}" for link in pcie[:6])
        found.warnings.append(
            f"TP={tp} over PCIe: GPU pairs {pairs} have no NVLink, so every layer's all-reduce crosses "
            f"PCIe and generation is slower. Choose a GPU type with NVLink (e.g. H100 SXM), or use fewer "
            f"GPUs if the model fits."
        )
    no_p2p = [link for link in links if not link.p2p]
    if no_p2p:
        found.warnings.append(
            f"Peer-to-peer access is unavailable between GPUs {', '.join(f'{x.a}-{x.b}' for x in no_p2p[:6])}: "
            f"NCCL goes through host memory. Check the host's IOMMU/ACS settings, or use another machine."
        )
    if warning := shm_warning(shm, f"{tp} ranks"):
        found.warnings.append(warning)
    return found


def shm_warning(shm: int | None, between: str) -> str | None:
    """A warning when /dev/shm is too small for NCCL (and Ray's object store), else None."""
    if shm is None or shm >= MIN_SHM_BYTES:
        return None
    return (
        f"/dev/shm is {shm / 2**20:.0f} MiB; NCCL needs more between {between} and may fail with a bus "
        f"error. Raise it: docker run --shm-size=16g (or --ipc=host); in Kubernetes mount an emptyDir "
        f"with medium: Memory at /dev/shm."
    )


def transformers_backend_problem(model_type: str, tp: int, tp_plan: dict[str, str] | None) -> str | None:
    """MODEL_IMPL=transformers splits the model by transformers' own plan (base_model_tp_plan): at
    TP > 1 an architecture without one cannot be split that way. None: no problem (or transformers
    does not know the architecture, as with remote code, whose config may bring its own plan)."""
    if tp <= 1 or tp_plan is None or tp_plan:
        return None
    return (
        f"MODEL_IMPL=transformers at TENSOR_PARALLEL_SIZE={tp}: transformers has no tensor-parallel plan "
        f"(base_model_tp_plan) for {model_type} models, so its backend cannot split this one. Use MODEL_IMPL=auto "
        "(vLLM's own implementation) or TENSOR_PARALLEL_SIZE=1."
    )
