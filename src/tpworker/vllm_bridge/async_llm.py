"""vLLM's configuration and its AsyncLLM: built, started, observed (steps), and its death recognised."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vllm import AsyncEngineArgs

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.protocol import EngineClient
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase, StatLoggerFactory
    from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats


def vllm_version() -> str:
    from vllm import __version__

    return __version__


def create_engine_config(engine_args: AsyncEngineArgs) -> VllmConfig:
    """vLLM's full configuration from the engine arguments (validates them; loads config.json)."""
    return engine_args.create_engine_config()


def trace_once_eager_compilation() -> dict[str, Any]:
    """A compilation config that traces the model once with dynamo and runs the trace with torch's
    eager backend: the warm-up pass of a compiled mode, the kernels of eager mode."""
    from vllm.config import CompilationMode

    return {"mode": int(CompilationMode.DYNAMO_TRACE_ONCE), "backend": "eager"}


def ray_unsupported_reason() -> str | None:
    """Why vLLM cannot run this machine's ranks on Ray, or None if it can. vLLM asks Ray for one
    unit of the platform's Ray resource per rank (GPU on CUDA); its CPU platform names none, and its
    Ray executor then stops the engine core with "current platform cpu does not support ray."."""
    from vllm.platforms import current_platform

    if current_platform.ray_device_key:
        return None
    name = current_platform.device_name
    return (
        f"vLLM's {name} platform cannot run its ranks on Ray: it names no Ray resource to place them on "
        f'(vLLM\'s Ray executor stops with "current platform {name} does not support ray.")'
    )


def start_async_llm(
    vllm_config: VllmConfig, engine_args: AsyncEngineArgs, on_engine_step: Callable[[], object] | None = None
) -> AsyncLLM:
    """AsyncLLM for the config. `on_engine_step()` is called each time the engine core reports
    a step (through vLLM's stat-logger interface), which is how the watchdog sees progress."""
    from vllm.v1.engine.async_llm import AsyncLLM

    loggers: list[StatLoggerFactory] | None = [_step_logger_factory(on_engine_step)] if on_engine_step else None
    return AsyncLLM.from_vllm_config(
        vllm_config,
        enable_log_requests=engine_args.enable_log_requests,
        disable_log_stats=engine_args.disable_log_stats,
        stat_loggers=loggers,
    )


def _step_logger_factory(on_engine_step: Callable[[], object]) -> type[StatLoggerBase]:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepLogger(StatLoggerBase):
        def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: SchedulerStats | None,
            iteration_stats: IterationStats | None,
            mm_cache_stats: MultiModalCacheStats | None = None,
            engine_idx: int = 0,
        ) -> None:
            on_engine_step()

        def log_engine_initialized(self) -> None:
            pass

    return StepLogger


def is_engine_dead(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


def generates(llm: EngineClient) -> bool:
    """The model runs as a generative model (not as a pooling one: RUNNER=pooling or CONVERT=...)."""
    return llm.model_config.runner_type == "generate"
