"""Settings + machine -> what the engine is started with, checked before anything loads.

Order matters for cold starts: everything that can refuse a bad configuration (the model's
config, the tensor-parallel plan) runs before vLLM is imported, so a mistake costs seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tpworker import default_model, hardware
from tpworker.errors import StartRefused
from tpworker.modelinfo import ModelFacts, read_model_config
from tpworker.parallel import ParallelPlan, plan_parallelism
from tpworker.settings import Settings

log = logging.getLogger(__name__)


class StartError(StartRefused):
    """The worker cannot start; the message says what to change."""


@dataclass(frozen=True)
class ModelChoice:
    path_or_id: str
    served_name: str
    why: str


@dataclass
class StartPlan:
    model: ModelChoice
    facts: ModelFacts
    parallel: ParallelPlan
    gpus: list[hardware.Gpu]
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Options of vLLM's OpenAI frontend (chat template, tool and reasoning parsers, ...).
    openai_options: dict[str, Any] = field(default_factory=dict)
    # Variables vLLM's processes must see, set just before they spawn.
    environment: dict[str, str] = field(default_factory=dict)


def choose_model(settings: Settings, gpus: list[hardware.Gpu]) -> ModelChoice:
    model = settings.worker.model
    if model:
        served = settings.worker.openai_served_model_name_override or model
        return ModelChoice(model, served, f"{settings.source_of('model')} is set")
    if gpus:
        raise StartError(
            "MODEL_NAME is not set. Set it to a Hugging Face model id (e.g. meta-llama/Meta-Llama-3-70B-Instruct) "
            "or to a folder holding the model."
        )
    try:
        _, padded = default_model.ensure_built(settings.cache_dir / "models")
    except Exception as e:
        raise StartError(f"MODEL_NAME is not set and the embedded default model could not be built: {e}") from e
    served = settings.worker.openai_served_model_name_override or default_model.SERVED_NAME
    return ModelChoice(
        str(padded),
        served,
        f"MODEL_NAME is not set and no GPU is visible: serving the embedded default model "
        f"{default_model.SERVED_NAME} (zero-padded to 12 heads / 4 KV heads for TP 1, 2, 4) from {padded}",
    )


def model_facts(settings: Settings, model: ModelChoice) -> ModelFacts:
    try:
        config = read_model_config(model.path_or_id, settings.worker.revision)
        return ModelFacts.from_config(config)
    except Exception as e:
        raise StartError(
            f"Cannot read the model's config.json ({settings.source_of('model')}={model.path_or_id!r}): "
            f"{' '.join(str(e).split())}"
        ) from e


def plan_start(settings: Settings) -> StartPlan:
    """The model and the parallel layout, checked without importing vLLM (a bad plan is refused
    within seconds). Raises StartError / PlanError. Then `add_engine_args` completes the plan."""
    gpus = hardware.visible_gpus(settings.cuda_visible_devices)
    model = choose_model(settings, gpus)
    log.info("Model: %s", model.why)
    facts = model_facts(settings, model)
    requested = settings.worker.tensor_parallel_size
    parallel = plan_parallelism(
        facts,
        len(gpus),
        None if requested == "auto" else requested,
        settings.worker.pipeline_parallel_size,
        tp_variable=settings.source_of("tensor_parallel_size"),
    )
    log.info(
        "Parallelism: TP=%d x PP=%d, because %s.",
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        parallel.reason,
    )
    if parallel.warning:
        log.warning(parallel.warning)
    return StartPlan(model, facts, parallel, gpus)


def add_engine_args(settings: Settings, plan: StartPlan) -> StartPlan:
    """The engine's arguments: the environment's (converted by vLLM's parser, so this imports
    vLLM; raises SettingsError), plus the model and layout decided by plan_start."""
    from tpworker import vllm_bridge

    options = settings.vllm_args()  # imports vLLM; raises SettingsError for bad values
    plan.openai_options = {k: v for k, v in options.items() if not vllm_bridge.is_engine_arg(k)}
    plan.engine_args = engine_args(settings, plan, {k: v for k, v in options.items() if vllm_bridge.is_engine_arg(k)})
    if not plan.gpus:
        plan.environment = cpu_environment(settings, plan.parallel)
    return plan


def run_preflight(settings: Settings, plan: StartPlan) -> None:
    """Memory and interconnect checks against the real GPUs, before the engine loads anything.
    Raises PreflightError when the plan cannot fit; logs the memory plan and any warnings."""
    from tpworker import preflight, vllm_bridge
    from tpworker.memory import MemoryModel
    from tpworker.modelinfo import weights_size

    if not plan.gpus:
        return  # on CPU the KV cache has a fixed size (VLLM_CPU_KVCACHE_SPACE)
    args, parallel = plan.engine_args, plan.parallel
    memory = MemoryModel(
        plan.facts,
        dtype=args.get("dtype"),
        kv_cache_dtype=args.get("kv_cache_dtype"),
        real_weight_bytes=weights_size(plan.model.path_or_id, settings.worker.revision),
    )
    max_model_len = args.get("max_model_len") or -1
    if max_model_len < 0:  # unset or auto: vLLM starts from the model's own context length
        max_model_len = plan.facts.max_position_embeddings or 2048
    ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
    findings = preflight.memory_findings(
        memory,
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        gpu_bytes=min(gpu.memory_bytes for gpu in plan.gpus[:ranks]),
        utilization=args.get("gpu_memory_utilization") or vllm_bridge.engine_arg_default("gpu_memory_utilization"),
        max_model_len=max_model_len,
        max_concurrency=settings.worker.max_concurrency,
        gpu_count=len(plan.gpus),
    )
    links = hardware.gpu_links(settings.cuda_visible_devices, parallel.tensor_parallel_size)
    wiring = preflight.interconnect_findings(parallel.tensor_parallel_size, links, hardware.shm_bytes())
    for note in findings.notes:
        log.info(note)
    for warning in findings.warnings + wiring.warnings:
        log.warning(warning)


def engine_args(settings: Settings, plan: StartPlan, args: dict[str, Any]) -> dict[str, Any]:
    """The engine's arguments: the environment's, plus the model and the layout decided here."""
    worker = settings.worker
    args.update(
        model=plan.model.path_or_id,
        tensor_parallel_size=plan.parallel.tensor_parallel_size,
        pipeline_parallel_size=plan.parallel.pipeline_parallel_size,
    )
    for name in ("revision", "tokenizer", "tokenizer_revision"):
        if getattr(worker, name):
            args[name] = getattr(worker, name)
    if worker.openai_served_model_name_override or "served_model_name" not in args:
        args["served_model_name"] = [plan.model.served_name]  # the override, else the model's name
    if not plan.gpus:
        args.update(cpu_defaults(settings, args))
    return args


CPU_KV_CACHE_BYTES = 2 * 1024**3


def cpu_defaults(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    """Engine arguments that suit vLLM's CPU build, where the user has not chosen."""
    defaults: dict[str, Any] = {}
    if "enforce_eager" not in args:
        # vLLM's compiled mode gave wrong answers on CPU (see NOTES.md) and starts ~4x slower.
        defaults["enforce_eager"] = True
        log.info("No GPU: running vLLM in eager mode (set ENFORCE_EAGER=false to compile).")
    memory_chosen = settings.cpu_kv_cache_set or {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(args)
    if not memory_chosen:
        # On CPU, vLLM otherwise reserves GPU_MEMORY_UTILIZATION (92%) of the machine's memory.
        defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        log.info(
            "No GPU: KV cache of %d GiB per rank (set VLLM_CPU_KVCACHE_SPACE=<GiB> to change).",
            CPU_KV_CACHE_BYTES // 1024**3,
        )
    return defaults


def cpu_environment(settings: Settings, parallel: ParallelPlan) -> dict[str, str]:
    """On CPU each rank is a process; give each its own cores unless the user chose a binding."""
    ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
    if settings.cpu_threads_bind:
        log.info("CPU threads: VLLM_CPU_OMP_THREADS_BIND=%s (set by you).", settings.cpu_threads_bind)
        return {}
    cpus = hardware.usable_cpus()
    binding = hardware.cpu_threads_binding(ranks, cpus)
    if binding is None:
        return {}
    if binding == "nobind":
        log.warning(
            "%d CPU ranks share %d cores: threads are not bound and generation will be slow. "
            "Use at most %d ranks on this machine.", ranks, len(cpus), len(cpus)
        )
    else:
        log.info("CPU threads: %d ranks on %d cores, VLLM_CPU_OMP_THREADS_BIND=%s", ranks, len(cpus), binding)
    return {"VLLM_CPU_OMP_THREADS_BIND": binding}
