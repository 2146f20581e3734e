"""Model facts -> which tensor-parallel sizes work, and which one the worker uses.

Pure Python over the model's config.json: no GPU, no weights, no vLLM. The rules are the ones
vLLM's layers enforce when they shard a model:
- attention heads split evenly: heads % tp == 0;
- KV heads split evenly (kv % tp == 0), or, when tp exceeds them, each KV head is replicated on
  tp / kv ranks (tp % kv == 0);
- the MLP's intermediate size splits evenly (column-parallel up/gate, row-parallel down); for a
  mixture of experts, each expert's (vLLM shards every expert across the ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

from tpworker.errors import StartRefused
from tpworker.modelinfo import ModelFacts


def tp_problem(facts: ModelFacts, tp: int) -> str | None:
    """Why `tp` cannot split this model, or None if it can."""
    if tp < 1:
        return "it must be at least 1"
    if facts.attention_heads % tp:
        return f"the model's {facts.attention_heads} attention heads do not divide by {tp}"
    if facts.kv_heads % tp and tp % facts.kv_heads:
        return (
            f"the model's {facts.kv_heads} KV heads neither divide by {tp} nor divide {tp} "
            f"(needed to replicate them)"
        )
    if facts.intermediate_size % tp:
        what = "each expert's intermediate size" if facts.experts else "the MLP's intermediate size"
        return f"{what} {facts.intermediate_size} does not divide by {tp}"
    return None


def valid_tp_sizes(facts: ModelFacts, up_to: int | None = None) -> list[int]:
    """Every valid TP size, at most `up_to` (default: the number of attention heads)."""
    limit = facts.attention_heads if up_to is None else min(up_to, facts.attention_heads)
    return [tp for tp in range(1, limit + 1) if tp_problem(facts, tp) is None]


@dataclass(frozen=True)
class ParallelPlan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    reason: str
    warning: str | None = None


class PlanError(StartRefused):
    """A parallel layout that cannot work, said in words the user can act on."""


def plan_parallelism(
    facts: ModelFacts, gpus: int, tp: int | None, pp: int = 1, tp_variable: str = "TENSOR_PARALLEL_SIZE"
) -> ParallelPlan:
    """Check a requested TP size (`tp`), or choose one (`tp` None), for `gpus` visible GPUs
    (0: no GPU, the CPU build of vLLM runs each rank as a process)."""
    valid = valid_tp_sizes(facts)
    if tp is not None:
        if problem := tp_problem(facts, tp):
            raise PlanError(
                f"{tp_variable}={tp} cannot split this model: {problem}. "
                f"Valid sizes for this model: {', '.join(map(str, valid))}. "
                f"Set {tp_variable} to one of them, or to auto."
            )
        if gpus and tp * pp > gpus:
            raise PlanError(
                f"{tp_variable}={tp} x PIPELINE_PARALLEL_SIZE={pp} needs {tp * pp} GPUs, "
                f"but this worker sees {gpus}. Lower {tp_variable}, or deploy on {tp * pp} GPUs."
            )
        return ParallelPlan(tp, pp, f"{tp_variable}={tp} was set")
    if not gpus:
        return ParallelPlan(1, pp, "no GPU is visible, so one rank on the CPU")
    per_stage = gpus // pp
    if per_stage < 1:
        raise PlanError(
            f"PIPELINE_PARALLEL_SIZE={pp} needs at least {pp} GPUs, but this worker sees {gpus}."
        )
    fitting = [size for size in valid if size <= per_stage]
    chosen = fitting[-1]
    if chosen == per_stage:
        return ParallelPlan(chosen, pp, f"{gpus} GPUs are visible and {chosen} is a valid size for the model")
    return ParallelPlan(
        chosen,
        pp,
        f"{chosen} is the largest valid size for the model up to {per_stage}",
        warning=(
            f"{per_stage} GPUs per pipeline stage are visible but {per_stage} cannot split this model "
            f"({tp_problem(facts, per_stage)}); using TP={chosen}, so {per_stage - chosen} GPU(s) "
            f"per stage stay idle. Valid sizes: {', '.join(map(str, valid))}."
        ),
    )
