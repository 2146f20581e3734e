"""Settings + machine -> the frozen plan the worker starts from, checked before anything loads.

Order matters for cold starts: what can refuse a bad configuration without vLLM (the model's config,
the tensor-parallel plan: model_and_layout.py) runs before vLLM is imported; then the engine's arguments
(engine_args.py, through vLLM's parser) and the memory and interconnect checks against the GPUs.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpworker import timeline
from tpworker.config.settings import Settings
from tpworker.models import adapters
from tpworker.planning import hardware, start_time
from tpworker.planning.parallel import ClusterShape, ParallelPlan
from tpworker.planning.start_time import StartEstimate
from tpworker.startup.compile_cache import compile_cache_environment
from tpworker.startup.engine_args import cpu_environment, engine_args
from tpworker.startup.load_format import check_load_format
from tpworker.startup.model_and_layout import Layout, StartError, plan_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartPlan:
    layout: Layout
    engine_args: dict[str, Any]
    # Options of vLLM's OpenAI frontend (chat template, tool and reasoning parsers, ...).
    openai_options: dict[str, Any]
    # Variables vLLM's processes must see, set just before they spawn.
    environment: dict[str, str]
    # The start's estimated duration (None: the weights are not on this machine yet, or unknown).
    start_estimate: StartEstimate | None = None

    @property
    def parallel(self) -> ParallelPlan:
        return self.layout.parallel

    @property
    def model(self) -> str:
        """What the engine loads: a folder, or a hub id."""
        model: str = self.engine_args["model"]
        return model

    @property
    def served_names(self) -> list[str]:
        """The names requests use for the model (OpenAI's `model` field, /v1/models)."""
        return list(self.engine_args["served_model_name"])


def plan_start(settings: Settings, layout: Layout | None = None, cluster: ClusterShape | None = None) -> StartPlan:
    """The whole plan: the layout (plan_layout, unless already made), the engine's arguments from the
    environment (imports vLLM; raises SettingsError for bad values), then the preflight checks
    against the GPUs (raises PreflightError when the plan cannot fit)."""
    layout = layout or plan_layout(settings, cluster)
    read_speed = _read_speed_beside_the_import(layout)
    from tpworker.vllm_bridge import arguments, async_llm

    timeline.mark("vLLM imported")
    options = settings.vllm_args()
    if options.get("lora_modules"):  # each adapter a local folder before anything loads
        options["lora_modules"] = adapters.resolve_modules(settings, options["lora_modules"])
    if layout.parallel.backend == "ray" and (reason := async_llm.ray_unsupported_reason()):
        raise StartError(f"DISTRIBUTED_EXECUTOR_BACKEND=ray: {reason}. Use DISTRIBUTED_EXECUTOR_BACKEND=mp here.")
    args = engine_args(settings, layout, {k: v for k, v in options.items() if arguments.is_engine_arg(k)})
    if options.get("lora_modules"):
        _enable_lora(settings, args, options["lora_modules"])
    check_load_format(args, layout)
    if args.get("model_impl") == "transformers":
        from tpworker.planning.planner import transformers_tp_plan
        from tpworker.planning.preflight import transformers_backend_problem

        tp, model_type = layout.parallel.tensor_parallel_size, layout.facts.model_type
        if problem := transformers_backend_problem(model_type, tp, transformers_tp_plan(model_type)):
            raise StartError(problem)
    environment = {"HF_HUB_OFFLINE": "1"} if layout.model.offline else {}
    if not layout.gpus:
        environment.update(cpu_environment(settings, layout.parallel))
    if not args.get("enforce_eager"):  # something to compile: keep it on the volume for the next worker
        environment.update(compile_cache_environment(settings, layout, async_llm.vllm_version()))
    run_preflight(settings, layout, args)
    openai_options = {k: v for k, v in options.items() if not arguments.is_engine_arg(k)}
    compiles = bool(layout.gpus) and not args.get("enforce_eager")
    estimate = estimate_start(settings, layout, compiles, read_speed.result() if read_speed else None)
    timeline.mark("engine arguments checked")
    return StartPlan(layout, args, openai_options, environment, estimate)


def _read_speed_beside_the_import(layout: Layout) -> Future[float | None] | None:
    """The sample read of the start estimate, in a thread: reading a file releases the GIL, so it runs
    beside vLLM's import (seconds of Python) instead of after it, and leaves the weights' start in the
    page cache for the load all the same. None when the weights are not in a local folder."""
    folder = Path(layout.model.path_or_id)
    if not folder.is_dir():
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-speed")
    speed = pool.submit(start_time.measure_read_speed, folder)
    pool.shutdown(wait=False)  # the read goes on; plan_start waits for its result after the import
    return speed


def estimate_start(settings: Settings, layout: Layout, compiles: bool, speed: float | None) -> StartEstimate | None:
    """The start's duration from the weights' size and the speed this machine reads them at (measured by
    _read_speed_beside_the_import), logged against RUNPOD_INIT_TIMEOUT: a warning, naming the variable,
    when it comes close."""
    from tpworker.planning.modelinfo import weights_size

    folder = Path(layout.model.path_or_id)
    size = weights_size(str(folder)) if folder.is_dir() else None
    if not size or not speed:
        return None
    estimate = start_time.StartEstimate(size, speed, f"measured reading {folder}", compiles)
    worker = settings.worker
    source = start_time.timeout_source(worker.runpod_init_timeout, "runpod_init_timeout" in worker.model_fields_set)
    sentence, warns = start_time.against_timeout(estimate, worker.runpod_init_timeout, source)
    (log.warning if warns else log.info)(sentence)
    return estimate


def _enable_lora(settings: Settings, args: dict[str, Any], modules: list[Any]) -> None:
    """LORA_MODULES turns LoRA on (vLLM would refuse the adapters otherwise), with a rank limit
    that holds them: the smallest of vLLM's sizes at or above the largest adapter's rank, unless
    MAX_LORA_RANK is set, in which case an adapter above it is refused by name."""
    from tpworker.vllm_bridge import arguments

    if not args.get("enable_lora"):
        args["enable_lora"] = True
        log.info("LORA_MODULES is set: LoRA enabled (ENABLE_LORA=true).")
    ranks = {m.name: adapters.adapter_rank(Path(m.path)) or 0 for m in modules}
    name, rank = max(ranks.items(), key=lambda item: item[1])
    if "max_lora_rank" in args:
        if rank > args["max_lora_rank"]:
            raise StartError(
                f"LORA_MODULES: the adapter {name} has rank {rank}, above MAX_LORA_RANK={args['max_lora_rank']}. "
                f"Set MAX_LORA_RANK to at least {rank}."
            )
        return
    sizes = arguments.choices_of("max_lora_rank")
    if rank > arguments.engine_arg_default("max_lora_rank"):
        args["max_lora_rank"] = min((size for size in sizes if size >= rank), default=rank)
        log.info("LoRA: MAX_LORA_RANK=%d, for the adapter %s of rank %d.", args["max_lora_rank"], name, rank)


def run_preflight(settings: Settings, layout: Layout, args: dict[str, Any]) -> None:
    """Memory and interconnect checks against the real GPUs, before the engine loads anything.
    Raises PreflightError when the plan cannot fit; logs the memory plan and any warnings."""
    from tpworker.planning import preflight
    from tpworker.planning.memory import MemoryModel
    from tpworker.planning.modelinfo import weights_size
    from tpworker.vllm_bridge import arguments

    if not layout.gpus:
        return  # on CPU the KV cache has a fixed size (VLLM_CPU_KVCACHE_SPACE)
    parallel = layout.parallel
    memory = MemoryModel(
        layout.facts,
        dtype=args.get("dtype"),
        kv_cache_dtype=args.get("kv_cache_dtype"),
        real_weight_bytes=weights_size(layout.model.path_or_id, settings.worker.revision),
    )
    max_model_len = args.get("max_model_len") or -1
    if max_model_len < 0:  # unset or auto: vLLM starts from the model's own context length
        max_model_len = layout.facts.max_position_embeddings or 2048
    ranks = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
    findings = preflight.memory_findings(
        memory,
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        gpu_bytes=min(gpu.memory_bytes for gpu in layout.gpus[:ranks]),
        utilization=args.get("gpu_memory_utilization") or arguments.engine_arg_default("gpu_memory_utilization"),
        max_model_len=max_model_len,
        max_concurrency=settings.worker.max_concurrency,
        gpu_count=parallel.cluster.total_gpus if parallel.cluster else len(layout.gpus),
    )
    links = hardware.gpu_links(settings.cuda_visible_devices, parallel.tensor_parallel_size)
    wiring = preflight.interconnect_findings(parallel.tensor_parallel_size, links, hardware.shm_bytes())
    for note in findings.notes:
        log.info(note)
    for warning in findings.warnings + wiring.warnings:
        log.warning(warning)
