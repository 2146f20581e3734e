"""The engine's arguments: what the environment sets (converted by vLLM's parser), the model and layout
decided by the layout step, and defaults that suit vLLM's CPU build where the user has not chosen."""

from __future__ import annotations

import logging
from typing import Any

from tpworker.config.settings import Settings
from tpworker.config.variables import CPU_DTYPE, CPU_KV_CACHE_BYTES, CPU_LONG_PREFILL_TOKENS
from tpworker.planning import hardware
from tpworker.planning.parallel import ParallelPlan
from tpworker.startup.model_and_layout import Layout, ModelChoice, StartError

log = logging.getLogger(__name__)


def engine_args(settings: Settings, layout: Layout, args: dict[str, Any]) -> dict[str, Any]:
    """The engine's arguments: the environment's, plus the model and the layout decided here."""
    worker = settings.worker
    args.update(
        model=layout.model.path_or_id,
        tensor_parallel_size=layout.parallel.tensor_parallel_size,
        pipeline_parallel_size=layout.parallel.pipeline_parallel_size,
    )
    if layout.parallel.backend:
        args["distributed_executor_backend"] = layout.parallel.backend
    for name in ("revision", "tokenizer", "tokenizer_revision"):
        if getattr(worker, name):
            args[name] = getattr(worker, name)
    if layout.model.tokenizer:  # baked beside the model: a folder, so no hub revision
        args["tokenizer"] = layout.model.tokenizer
        args.pop("tokenizer_revision", None)
    if layout.model.path_or_id != worker.model:  # resolved to a local copy of that revision
        args.pop("revision", None)
    args["served_model_name"] = served_model_names(settings, layout.model, args)
    if not layout.gpus:
        args.update(cpu_defaults(settings, args))
    return args


def served_model_names(settings: Settings, model: ModelChoice, args: dict[str, Any]) -> list[str]:
    """The names requests use for the model (OpenAI's `model` field, /v1/models), decided here only:
    OPENAI_SERVED_MODEL_NAME_OVERRIDE (worker-vllm's), else SERVED_MODEL_NAME (vLLM's), else the
    model's own name (the baked manifest's, the hub id, or the default model's)."""
    if settings.worker.openai_served_model_name_override:
        return [settings.worker.openai_served_model_name_override]
    return list(args.get("served_model_name") or [model.served_name])


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
        # vLLM's compiled mode starts several times slower on CPU (results/start/figures.md).
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
    if "long_prefill_token_threshold" not in args:
        defaults["long_prefill_token_threshold"] = CPU_LONG_PREFILL_TOKENS
        log.info(
            "No GPU: a long prompt is prefilled %d tokens a step while other requests run, so that it does not stall "
            "them (set LONG_PREFILL_TOKEN_THRESHOLD to change; 0: no limit).",
            CPU_LONG_PREFILL_TOKENS,
        )
    return defaults


def cpu_pipeline_defaults(args: dict[str, Any]) -> dict[str, Any]:
    """PP on CPU: vLLM 0.32's CPU runner allocates the buffer for the activations a stage receives
    from the previous one only in its warm-up pass, which eager mode skips, so the first request
    fails (AssertionError in sync_and_gather_intermediate_tensors). Tracing the model once with
    torch's eager backend runs that pass and computes what eager mode does (no inductor kernels: the same
    kernels as eager mode), as tests/test_pipeline_parallel.py checks against TP=1."""
    from tpworker.vllm_bridge import async_llm

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
    return {"compilation_config": async_llm.trace_once_eager_compilation()}


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
