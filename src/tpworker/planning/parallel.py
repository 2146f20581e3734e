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

from dataclasses import dataclass, replace

from tpworker.errors import StartRefused
from tpworker.planning.modelinfo import ModelFacts


def tp_problem(facts: ModelFacts, tp: int) -> str | None:
    """Why `tp` cannot split this model, or None if it can."""
    if tp < 1:
        return "it must be at least 1"
    if facts.attention_heads % tp:
        return f"the model's {facts.attention_heads} attention heads do not divide by {tp}"
    if facts.kv_heads % tp and tp % facts.kv_heads:
        return (
            f"the model's {facts.kv_heads} KV heads neither divide by {tp} nor divide {tp} (needed to replicate them)"
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
class ClusterShape:
    """The alive nodes of a Ray cluster: how many GPUs and CPUs each has."""

    gpus: tuple[int, ...]
    cpus: tuple[int, ...]
    address: str = ""

    @property
    def nodes(self) -> int:
        return len(self.gpus)

    @property
    def total_gpus(self) -> int:
        return sum(self.gpus)

    @property
    def total_cpus(self) -> int:
        return sum(self.cpus)

    def describe(self) -> str:
        where = f" at {self.address}" if self.address else ""
        if self.total_gpus:
            gpus = " + ".join(map(str, self.gpus))
            return f"the Ray cluster{where} has {self.total_gpus} GPUs on {self.nodes} node(s) ({gpus})"
        cpus = " + ".join(map(str, self.cpus))
        return f"the Ray cluster{where} has no GPU; {self.total_cpus} CPUs on {self.nodes} node(s) ({cpus})"


@dataclass(frozen=True)
class ParallelPlan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    reason: str
    warning: str | None = None
    backend: str | None = None  # DISTRIBUTED_EXECUTOR_BACKEND; None: vLLM's default (mp on one node)
    layers_per_stage: tuple[int, ...] = ()  # how the pipeline stages share the layers
    cluster: ClusterShape | None = None  # the Ray cluster the plan was checked against


class PlanError(StartRefused):
    """A parallel layout that cannot work, said in words the user can act on."""


def pp_layer_split(layers: int, pp: int, partition: str | None = None) -> list[int]:
    """Layers of each pipeline stage, as vLLM assigns them (vllm.distributed.utils.get_pp_indices):
    VLLM_PP_LAYER_PARTITION when given (one count per stage, summing to the layers); else
    layers // pp each, and the remainder one more each on the stages just before the last (the
    last also holds the final norm and the LM head), e.g. 30 layers / 4 stages -> 7, 8, 8, 7."""
    if pp > layers:
        raise PlanError(
            f"PIPELINE_PARALLEL_SIZE={pp} exceeds the model's {layers} layers: each stage needs at least one. "
            f"Use at most {layers} stages."
        )
    if partition is not None:
        try:
            counts = [int(part) for part in partition.split(",")]
        except ValueError:
            raise PlanError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} is not a comma-separated list of layer counts."
            ) from None
        if len(counts) != pp or sum(counts) != layers or min(counts) < 1:
            raise PlanError(
                f"VLLM_PP_LAYER_PARTITION={partition!r} must give each of the {pp} pipeline stages at least one "
                f"layer and sum to the model's {layers} layers (it gives {len(counts)} stages, {sum(counts)} layers). "
                f"Unset it for vLLM's split: {','.join(map(str, pp_layer_split(layers, pp)))}."
            )
        return counts
    counts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        counts[-i] += 1
    return counts


def _check_tp(facts: ModelFacts, tp: int, tp_variable: str) -> None:
    if problem := tp_problem(facts, tp):
        raise PlanError(
            f"{tp_variable}={tp} cannot split this model: {problem}. "
            f"Valid sizes for this model: {', '.join(map(str, valid_tp_sizes(facts)))}. "
            f"Set {tp_variable} to one of them, or to auto."
        )


def plan_parallelism(
    facts: ModelFacts,
    gpus: int,
    tp: int | None,
    pp: int = 1,
    tp_variable: str = "TENSOR_PARALLEL_SIZE",
    *,
    backend: str | None = None,
    cluster: ClusterShape | None = None,
    layer_partition: str | None = None,
) -> ParallelPlan:
    """Check a requested TP size (`tp`), or choose one (`tp` None), for `gpus` visible GPUs
    (0: no GPU, the CPU build of vLLM runs each rank as a process). With backend "ray" the ranks
    may be on every node of `cluster` (the live Ray cluster's shape)."""
    stages = tuple(pp_layer_split(facts.layers, pp, layer_partition))
    if backend == "ray":
        if cluster is None:
            raise ValueError("backend ray needs the cluster's shape")
        plan = _plan_on_ray(facts, gpus, tp, pp, tp_variable, cluster)
    else:
        plan = _plan_on_this_node(facts, gpus, tp, pp, tp_variable)
    return replace(plan, backend=backend, layers_per_stage=stages, cluster=cluster)


def _plan_on_this_node(facts: ModelFacts, gpus: int, tp: int | None, pp: int, tp_variable: str) -> ParallelPlan:
    valid = valid_tp_sizes(facts)
    if tp is not None:
        _check_tp(facts, tp, tp_variable)
        if gpus and tp * pp > gpus:
            raise PlanError(
                f"{tp_variable}={tp} x PIPELINE_PARALLEL_SIZE={pp} needs {tp * pp} GPUs, "
                f"but this worker sees {gpus}. Lower {tp_variable}, or deploy on {tp * pp} GPUs "
                f"(across nodes: DISTRIBUTED_EXECUTOR_BACKEND=ray on a Ray cluster, see `tpworker cluster`)."
            )
        return ParallelPlan(tp, pp, f"{tp_variable}={tp} was set")
    if not gpus:
        return ParallelPlan(1, pp, "no GPU is visible, so one rank on the CPU")
    per_stage = gpus // pp
    if per_stage < 1:
        raise PlanError(f"PIPELINE_PARALLEL_SIZE={pp} needs at least {pp} GPUs, but this worker sees {gpus}.")
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


def _plan_on_ray(
    facts: ModelFacts, gpus: int, tp: int | None, pp: int, tp_variable: str, cluster: ClusterShape
) -> ParallelPlan:
    """TP x PP against the whole Ray cluster. Each TP group stays within one node: its all-reduce
    runs at every layer and needs NVLink, while PP sends one activation per stage boundary."""
    on_gpus = cluster.total_gpus > 0
    if on_gpus and not gpus:
        raise PlanError(
            f"{cluster.describe()}, but this node has none: vLLM takes its platform from the node the worker "
            f"runs on. Run the worker (`tpworker cluster head`) on a GPU node."
        )
    devices, kind = (cluster.gpus, "GPUs") if on_gpus else (cluster.cpus, "CPUs")
    total, largest = sum(devices), max(devices, default=0)
    if tp is not None:
        _check_tp(facts, tp, tp_variable)
        if tp * pp > total:
            raise PlanError(
                f"{tp_variable}={tp} x PIPELINE_PARALLEL_SIZE={pp} needs {tp * pp} {kind}, but {cluster.describe()}. "
                f"Add nodes (`tpworker cluster join {cluster.address or 'HEAD:PORT'}` on each), or lower the sizes."
            )
        if on_gpus and tp > largest:
            stages = -(-tp * pp // largest)
            raise PlanError(
                f"{tp_variable}={tp} would split each layer across nodes: the largest node of the Ray cluster has "
                f"{largest} GPUs, and tensor parallelism all-reduces at every layer. Keep TP within a node and "
                f"split across nodes by pipeline: {tp_variable}={largest} x PIPELINE_PARALLEL_SIZE={stages}."
            )
        return ParallelPlan(tp, pp, f"{tp_variable}={tp} was set; {cluster.describe()}")
    if not on_gpus:
        return ParallelPlan(1, pp, f"{cluster.describe()}, so one CPU rank per stage")
    limit = min(largest, total // pp)
    fitting = [size for size in valid_tp_sizes(facts) if size <= limit]
    if not fitting:
        raise PlanError(f"PIPELINE_PARALLEL_SIZE={pp} needs at least {pp} GPUs, but {cluster.describe()}.")
    chosen = fitting[-1]
    idle = total - chosen * pp
    return ParallelPlan(
        chosen,
        pp,
        f"{chosen} is the largest valid size for the model within one node's GPUs; {cluster.describe()}",
        warning=(f"{idle} GPU(s) of the Ray cluster stay idle at TP={chosen} x PP={pp}." if idle else None),
    )
