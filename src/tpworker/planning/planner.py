"""`tpworker plan`: which TP sizes work for a model, what each GPU holds at each, and which to use.

The recommendation answers "how many GPUs should this endpoint have": the smallest valid TP size
whose GPUs hold the weights and MAX_CONCURRENCY requests of MAX_MODEL_LEN in KV cache (fewer GPUs,
lower cost), else the size that holds the most. A worker that already has N GPUs uses them all
(TENSOR_PARALLEL_SIZE=auto: the largest valid size up to N), since every GPU of it is paid for.

With several nodes (--nodes), the rows go on past one node: TP stays at the largest valid size
within a node (its all-reduce at every layer needs NVLink) and pipeline stages spread the layers
over the nodes (one activation per stage boundary crosses the network), as vLLM does on Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tpworker.planning.memory import GB, RUNTIME_RESERVE_BYTES, GiB, MemoryModel, capacity
from tpworker.planning.modelinfo import ModelFacts, read_model_config, weights_size
from tpworker.planning.parallel import pp_layer_split, tp_problem, valid_tp_sizes
from tpworker.planning.start_time import RUNPOD_INIT_TIMEOUT_S, StartEstimate, against_timeout


@dataclass
class PlanRow:
    tensor_parallel_size: int
    weights_gb_per_gpu: float
    weights_fit: bool
    kv_cache_gb_per_gpu: float
    kv_tokens: int
    requests_at_max_len: float
    kv_heads_per_gpu: int
    note: str = ""
    pipeline_parallel_size: int = 1
    layers_per_stage: list[int] = field(default_factory=list)


@dataclass
class PlanReport:
    model: str
    architecture: str
    attention_heads: int
    kv_heads: int
    layers: int
    parameters: int
    weights_gb: float
    weights_source: str
    dtype: str
    gpus: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    max_model_len: int
    max_concurrency: int
    valid_sizes: list[int]
    invalid_sizes: dict[int, str]  # TP sizes up to `gpus` that cannot split the model, and why
    rows: list[PlanRow]
    recommended: int | None
    reason: str
    auto_on_gpus: int | None  # what TENSOR_PARALLEL_SIZE=auto picks on a worker with `gpus` GPUs
    tp_plan: dict[str, str] = field(default_factory=dict)
    nodes: int = 1  # with more than one, `gpus` is per node
    recommended_pp: int | None = None
    start_estimate: str = ""  # the start's estimated duration against RunPod's init timeout
    start_estimate_warns: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def transformers_tp_plan(model_type: str) -> dict[str, str] | None:
    """transformers' own tensor-parallel plan for the architecture (layer pattern -> colwise/rowwise):
    {} when transformers knows the architecture and has no plan for it, None when it does not know it."""
    try:
        from transformers import CONFIG_MAPPING

        return dict(getattr(CONFIG_MAPPING[model_type], "base_model_tp_plan", None) or {})
    except (KeyError, ImportError):
        return None


def build_report(
    model: str,
    *,
    gpus: int,
    gpu_memory_gib: float,
    nodes: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.92,
    max_concurrency: int = 30,
    dtype: str | None = None,
    kv_cache_dtype: str | None = None,
    revision: str | None = None,
    read_gb_per_s: float = 0.5,
    read_speed_source: str = "assumed",
    init_timeout_s: int = RUNPOD_INIT_TIMEOUT_S,
    init_timeout_source: str = "RunPod's default",
) -> PlanReport:
    config = read_model_config(model, revision)
    facts = ModelFacts.from_config(config)
    real = weights_size(model, revision)
    memory = MemoryModel(facts, dtype, kv_cache_dtype, real_weight_bytes=real)
    max_model_len = max_model_len or facts.max_position_embeddings or 4096
    valid = valid_tp_sizes(facts, up_to=gpus)
    layouts = [(tp, 1) for tp in valid]
    if nodes > 1 and valid:  # past one node: TP within the node, PP across nodes
        layouts += [(valid[-1], pp) for pp in range(2, min(nodes, facts.layers) + 1)]
    rows: list[PlanRow] = []
    for tp, pp in layouts:
        rank = memory.rank(tp, pp)
        cap = capacity(rank, gpu_memory_gib * GiB, gpu_memory_utilization, max_model_len)
        note = ""
        if not cap.weights_fit:
            note = "weights do not fit"
        elif not cap.fits_one_sequence:
            note = f"no room for one request of {max_model_len:,} tokens"
        elif cap.sequences_at_max_len < max_concurrency:
            note = f"fewer than {max_concurrency} requests of {max_model_len:,} tokens"
        if memory.kv_heads_per_rank(tp) * tp > facts.kv_heads:
            note = "; ".join(filter(None, [note, "KV heads replicated"]))
        rows.append(
            PlanRow(
                tp,
                round(rank.weight_bytes / GB, 1),
                cap.weights_fit,
                round(cap.kv_cache_bytes / GB, 1),
                cap.kv_tokens,
                round(cap.sequences_at_max_len, 1),
                memory.kv_heads_per_rank(tp),
                note,
                pp,
                pp_layer_split(facts.layers, pp),
            )
        )
    best, reason = _recommend(rows, max_concurrency, max_model_len, gpus * nodes, gpu_memory_gib)
    estimate = StartEstimate(int(memory.total_weight_bytes), read_gb_per_s * GB, read_speed_source, compiles=True)
    start_estimate, warns = against_timeout(estimate, init_timeout_s, init_timeout_source)
    return PlanReport(
        model=model,
        architecture=(config.get("architectures") or [facts.model_type])[0],
        attention_heads=facts.attention_heads,
        kv_heads=facts.kv_heads,
        layers=facts.layers,
        parameters=memory.counts.total,
        weights_gb=round(memory.total_weight_bytes / GB, 1),
        weights_source="the weight files" if real else "estimated from config.json",
        dtype=memory_dtype(facts, dtype),
        gpus=gpus,
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_concurrency=max_concurrency,
        valid_sizes=valid,
        invalid_sizes={
            tp: problem
            for tp in range(1, gpus + 1)
            if tp not in valid and (problem := tp_problem(facts, tp)) is not None
        },
        rows=rows,
        recommended=best.tensor_parallel_size if best else None,
        reason=reason,
        auto_on_gpus=valid[-1] if valid else None,
        tp_plan=transformers_tp_plan(facts.model_type) or {},
        nodes=nodes,
        recommended_pp=best.pipeline_parallel_size if best else None,
        start_estimate=start_estimate,
        start_estimate_warns=warns,
    )


def memory_dtype(facts: ModelFacts, dtype: str | None) -> str:
    from tpworker.planning.memory import serving_dtype

    quant = (facts.quantization or {}).get("quant_method")
    return f"{serving_dtype(facts, dtype)}" + (f" ({quant} weights)" if quant else "")


def _recommend(
    rows: list[PlanRow], concurrency: int, max_model_len: int, gpus: int, gpu_memory_gib: float
) -> tuple[PlanRow | None, str]:
    """The row to use and why. Rows come in order of GPUs used, so the first that is enough is the
    cheapest."""
    usable = [r for r in rows if r.weights_fit and r.kv_tokens >= max_model_len]
    if not usable:
        return None, (
            f"No valid layout on up to {gpus} GPUs holds the weights and one request of {max_model_len:,} tokens on "
            f"{gpu_memory_gib:g} GiB GPUs: use more or larger GPUs, a quantized model, or a shorter --max-model-len."
        )
    enough = [r for r in usable if r.requests_at_max_len >= concurrency]
    if enough:
        best = enough[0]
        what = "valid size" if best.pipeline_parallel_size == 1 else "number of nodes"
        return best, (
            f"the smallest {what} whose GPUs hold the weights and {concurrency} requests of "
            f"{max_model_len:,} tokens ({best.kv_tokens:,} tokens of KV cache per GPU)"
        )
    best = max(usable, key=lambda r: r.requests_at_max_len)
    return best, (
        f"holds the most requests of {max_model_len:,} tokens ({best.requests_at_max_len:g}), though fewer "
        f"than {concurrency}: lower MAX_CONCURRENCY or MAX_MODEL_LEN, or use more GPUs"
    )


def render_text(report: PlanReport) -> str:
    r = report
    lines = [
        f"Model: {r.model} ({r.architecture}): {r.layers} layers, {r.attention_heads} attention heads, "
        f"{r.kv_heads} KV heads, {r.parameters / 1e9:.2f}B parameters",
        f"Weights: {r.weights_gb:.1f} GB in {r.dtype} ({r.weights_source})",
        f"GPUs: {f'{r.nodes} nodes of ' if r.nodes > 1 else ''}up to {r.gpus} x {r.gpu_memory_gib:g} GiB at "
        f"GPU_MEMORY_UTILIZATION {r.gpu_memory_utilization}; "
        f"MAX_MODEL_LEN {r.max_model_len:,}, MAX_CONCURRENCY {r.max_concurrency}",
        f"Valid TP sizes up to {r.gpus}: {', '.join(map(str, r.valid_sizes))}",
        "",
    ]
    header: tuple[str, ...] = (
        "TP",
        "weights/GPU",
        "fits",
        "KV cache/GPU",
        "KV tokens",
        f"requests@{r.max_model_len:,}",
        "note",
    )
    table: list[tuple[str, ...]] = [header] + [
        (
            str(row.tensor_parallel_size),
            f"{row.weights_gb_per_gpu:.1f} GB",
            "yes" if row.weights_fit else "NO",
            f"{row.kv_cache_gb_per_gpu:.1f} GB",
            f"{row.kv_tokens:,}",
            f"{row.requests_at_max_len:g}",
            row.note,
        )
        for row in r.rows
    ]
    if r.nodes > 1:  # pipeline stages and their layers, after the TP column
        header = header[:1] + ("PP", "layers/stage") + header[1:]
        table = [header] + [
            line[:1] + (str(row.pipeline_parallel_size), "+".join(map(str, row.layers_per_stage))) + line[1:]
            for line, row in zip(table[1:], r.rows, strict=True)
        ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    lines.append("")
    if r.recommended is not None and (r.recommended_pp or 1) > 1:
        pp = r.recommended_pp or 1
        lines.append(
            f"Recommended: TENSOR_PARALLEL_SIZE={r.recommended} x PIPELINE_PARALLEL_SIZE={pp} on Ray "
            f"(DISTRIBUTED_EXECUTOR_BACKEND=ray, {pp} nodes of {r.recommended} GPUs: TP within each node, "
            f"PP across nodes): {r.reason}."
        )
        lines.append(f"Layers per stage (vLLM's split): {', '.join(map(str, pp_layer_split(r.layers, pp)))}.")
    elif r.recommended is not None:
        lines.append(f"Recommended: TENSOR_PARALLEL_SIZE={r.recommended}: {r.reason}.")
        if r.nodes > 1:
            lines.append("One node is enough: no pipeline parallelism needed.")
    else:
        lines.append(f"Recommended: none. {r.reason}")
    if r.auto_on_gpus is not None and r.auto_on_gpus != r.recommended:
        lines.append(
            f"A worker with {r.gpus} GPUs and TENSOR_PARALLEL_SIZE=auto uses TP={r.auto_on_gpus} "
            "(all its GPUs are paid for)."
        )
    if r.invalid_sizes:
        lines.append("Not valid: " + "; ".join(f"TP={tp}: {why}" for tp, why in list(r.invalid_sizes.items())[:4]))
    lines.append(
        "Estimates: weights from parameter count x dtype (or the files' size); "
        f"{RUNTIME_RESERVE_BYTES / GiB:g} GiB per GPU kept for activations and CUDA graphs; "
        "vLLM measures the real figures at start."
    )
    if r.start_estimate:
        lines.append(("WARNING: " if r.start_estimate_warns else "") + r.start_estimate)
    if r.tp_plan:
        lines += [
            "",
            "transformers' tensor-parallel plan for this architecture (MODEL_IMPL=transformers splits by it):",
        ]
        lines += [f"  {pattern}: {style}" for pattern, style in r.tp_plan.items()]
    else:
        lines += [
            "",
            "transformers has no tensor-parallel plan for this architecture: "
            "MODEL_IMPL=transformers runs at TP=1 only.",
        ]
    return "\n".join(lines)
