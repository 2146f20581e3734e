"""Model facts -> which tensor-parallel sizes work, and which one the worker uses.

Pure Python over the model's config.json: no GPU, no weights, no vLLM. The rules are the ones
vLLM's layers enforce when they shard a model:
- attention heads split evenly: heads % tp == 0;
- KV heads split evenly (kv % tp == 0), or, when tp exceeds them, each KV head is replicated on
  tp / kv ranks (tp % kv == 0);
- the MLP's intermediate size splits evenly (column-parallel up/gate, row-parallel down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tpworker.errors import StartRefused


@dataclass(frozen=True)
class ModelShape:
    attention_heads: int
    kv_heads: int
    intermediate_size: int | None

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        text = config.get("text_config") or config  # multimodal configs nest the language model
        heads = text["num_attention_heads"]
        return cls(
            attention_heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            intermediate_size=text.get("intermediate_size"),
        )


def read_model_config(model: str, revision: str | None = None) -> dict:
    """config.json of a local folder or a Hugging Face repo (fetched alone, no weights)."""
    folder = Path(model)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: is it a model folder?")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model, "config.json", revision=revision))
    return json.loads(path.read_text())


def tp_problem(shape: ModelShape, tp: int) -> str | None:
    """Why `tp` cannot split this model, or None if it can."""
    if tp < 1:
        return "it must be at least 1"
    if shape.attention_heads % tp:
        return f"the model's {shape.attention_heads} attention heads do not divide by {tp}"
    if shape.kv_heads % tp and tp % shape.kv_heads:
        return (
            f"the model's {shape.kv_heads} KV heads neither divide by {tp} nor divide {tp} "
            f"(needed to replicate them)"
        )
    if shape.intermediate_size and shape.intermediate_size % tp:
        return f"the MLP's intermediate size {shape.intermediate_size} does not divide by {tp}"
    return None


def valid_tp_sizes(shape: ModelShape, up_to: int | None = None) -> list[int]:
    """Every valid TP size, at most `up_to` (default: the number of attention heads)."""
    limit = shape.attention_heads if up_to is None else min(up_to, shape.attention_heads)
    return [tp for tp in range(1, limit + 1) if tp_problem(shape, tp) is None]


@dataclass(frozen=True)
class ParallelPlan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    reason: str
    warning: str | None = None


class PlanError(StartRefused):
    """A parallel layout that cannot work, said in words the user can act on."""


def plan_parallelism(
    shape: ModelShape, gpus: int, tp: int | None, pp: int = 1, tp_variable: str = "TENSOR_PARALLEL_SIZE"
) -> ParallelPlan:
    """Check a requested TP size (`tp`), or choose one (`tp` None), for `gpus` visible GPUs
    (0: no GPU, the CPU build of vLLM runs each rank as a process)."""
    valid = valid_tp_sizes(shape)
    if tp is not None:
        if problem := tp_problem(shape, tp):
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
            f"({tp_problem(shape, per_stage)}); using TP={chosen}, so {per_stage - chosen} GPU(s) "
            f"per stage stay idle. Valid sizes: {', '.join(map(str, valid))}."
        ),
    )
