"""Settings + machine -> what the engine is started with, checked before anything loads.

Order matters for cold starts: everything that can refuse a bad configuration (the model's
config, the tensor-parallel plan) runs before vLLM is imported, so a mistake costs seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tpworker import default_model, hardware, resolve
from tpworker.errors import StartRefused
from tpworker.modelinfo import ModelFacts, read_model_config
from tpworker.parallel import ClusterShape, ParallelPlan, plan_parallelism
from tpworker.settings import Settings

log = logging.getLogger(__name__)


class StartError(StartRefused):
    """The worker cannot start; the message says what to change."""


# The model to serve: a folder (or a hub id to download), its served name, and why (resolve.py).
ModelChoice = resolve.Located


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
    # The baked manifest, a folder, the network volume's cache, or a hub id (resolve.py's order).
    located = resolve.locate(settings)
    if located is not None:
        return located
    if gpus:
        raise StartError(
            "MODEL_NAME is not set and no model is baked into the image (no manifest at "
            f"{settings.worker.model_manifest}). Set it to a Hugging Face model id "
            "(e.g. meta-llama/Meta-Llama-3-70B-Instruct) or to a folder holding the model."
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


def plan_start(settings: Settings, cluster: ClusterShape | None = None) -> StartPlan:
    """The model and the parallel layout, checked without importing vLLM (a bad plan is refused
    within seconds). Raises StartError / PlanError. Then `add_engine_args` completes the plan.
    With DISTRIBUTED_EXECUTOR_BACKEND=ray the layout is checked against the Ray cluster: `cluster`
    when given (the shape `tpworker cluster head` expects), else the live one at RAY_ADDRESS."""
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
        backend=settings.worker.distributed_executor_backend,
        cluster=ray_cluster(settings, cluster),
        layer_partition=settings.pp_layer_partition,
    )
    log.info(
        "Parallelism: TP=%d x PP=%d%s, because %s.",
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        " on Ray" if parallel.backend == "ray" else "",
        parallel.reason,
    )
    if parallel.pipeline_parallel_size > 1:
        log.info("Layers per pipeline stage: %s.", ", ".join(map(str, parallel.layers_per_stage)))
    if parallel.warning:
        log.warning(parallel.warning)
    if model.download:  # only now: a plan that cannot work is refused before a long download
        model = resolve.download(settings, model)
        log.info("Model: %s", model.why)
    environment = {"HF_HUB_OFFLINE": "1"} if model.offline else {}
    if model.offline:
        log.info("Everything the model needs is local: vLLM runs with HF_HUB_OFFLINE=1.")
    return StartPlan(model, facts, parallel, gpus, environment=environment)


def ray_cluster(settings: Settings, given: ClusterShape | None) -> ClusterShape | None:
    """The Ray cluster's shape when the ranks run on Ray (read from the live cluster unless given)."""
    if settings.worker.distributed_executor_backend != "ray" or given is not None:
        return given
    from tpworker import raystate

    shape = raystate.cluster_shape(settings.ray_address)
    log.info(
        "Ray cluster at %s: %d node(s), GPUs %s, CPUs %s.",
        shape.address,
        shape.nodes,
        "+".join(map(str, shape.gpus)),
        "+".join(map(str, shape.cpus)),
    )
    return shape


def add_engine_args(settings: Settings, plan: StartPlan) -> StartPlan:
    """The engine's arguments: the environment's (converted by vLLM's parser, so this imports
    vLLM; raises SettingsError), plus the model and layout decided by plan_start."""
    from tpworker import vllm_bridge

    options = settings.vllm_args()  # imports vLLM; raises SettingsError for bad values
    if plan.parallel.backend == "ray" and (reason := vllm_bridge.ray_unsupported_reason()):
        raise StartError(f"DISTRIBUTED_EXECUTOR_BACKEND=ray: {reason}. Use DISTRIBUTED_EXECUTOR_BACKEND=mp here.")
    plan.openai_options = {k: v for k, v in options.items() if not vllm_bridge.is_engine_arg(k)}
    plan.engine_args = engine_args(settings, plan, {k: v for k, v in options.items() if vllm_bridge.is_engine_arg(k)})
    if not plan.gpus:
        plan.environment.update(cpu_environment(settings, plan.parallel))
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
        gpu_count=parallel.cluster.total_gpus if parallel.cluster else len(plan.gpus),
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
    if plan.parallel.backend:
        args["distributed_executor_backend"] = plan.parallel.backend
    for name in ("revision", "tokenizer", "tokenizer_revision"):
        if getattr(worker, name):
            args[name] = getattr(worker, name)
    if plan.model.tokenizer:  # baked beside the model: a folder, so no hub revision
        args["tokenizer"] = plan.model.tokenizer
        args.pop("tokenizer_revision", None)
    if plan.model.path_or_id != worker.model:  # resolved to a local copy of that revision
        args.pop("revision", None)
    if worker.openai_served_model_name_override or "served_model_name" not in args:
        args["served_model_name"] = [plan.model.served_name]  # the override, else the model's name
    if not plan.gpus:
        args.update(cpu_defaults(settings, args))
    return args


CPU_KV_CACHE_BYTES = 2 * 1024**3
# vLLM's CPU kernels for bfloat16 differ between processors (oneDNN picks AVX-512 BF16 on one, AMX on
# another) and round differently; on a near tie of the first token that changes the greedy answer (README,
# "Known issues"). float32 gives the same tokens on every x86-64 CPU the tests have run on.
CPU_DTYPE = "float32"


def cpu_defaults(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    """Engine arguments that suit vLLM's CPU build, where the user has not chosen."""
    defaults: dict[str, Any] = {}
    if "dtype" not in args:
        defaults["dtype"] = CPU_DTYPE
        log.info(
            "No GPU: running in float32, because bfloat16 kernels differ between CPUs and can change a "
            "greedy answer (set DTYPE=bfloat16 for speed)."
        )
    if args.get("pipeline_parallel_size", 1) > 1:
        defaults.update(cpu_pipeline_defaults(args))
    elif "enforce_eager" not in args:
        # vLLM's compiled mode starts ~4x slower on CPU (~90 s for the default model).
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


def cpu_pipeline_defaults(args: dict[str, Any]) -> dict[str, Any]:
    """PP on CPU: vLLM 0.32's CPU runner allocates the buffer for the activations a stage receives
    from the previous one only in its warm-up pass, which eager mode skips, so the first request
    fails (AssertionError in sync_and_gather_intermediate_tensors). Tracing the model once with
    torch's eager backend runs that pass and computes what eager mode does (no inductor kernels: the same
    kernels as eager mode), as tests/test_pipeline_parallel.py checks against TP=1."""
    from tpworker import vllm_bridge

    if args.get("enforce_eager"):
        raise StartError(
            "PIPELINE_PARALLEL_SIZE>1 cannot run in eager mode on vLLM's CPU build (its pipeline stages after the "
            "first never allocate their input buffer without a warm-up pass). Unset ENFORCE_EAGER."
        )
    if "enforce_eager" in args or "compilation_config" in args:
        return {}  # the user chose how to compile
    log.info(
        "No GPU, %d pipeline stages: tracing the model once, run by torch's eager backend.",
        args["pipeline_parallel_size"],
    )
    return {"compilation_config": vllm_bridge.trace_once_eager_compilation()}


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
            "Use at most %d ranks on this machine.",
            ranks,
            len(cpus),
            len(cpus),
        )
    else:
        log.info("CPU threads: %d ranks on %d cores, VLLM_CPU_OMP_THREADS_BIND=%s", ranks, len(cpus), binding)
    return {"VLLM_CPU_OMP_THREADS_BIND": binding}
