"""The one way a worker starts from its plan: the engine, the worker in front of it, and the
watchdog that ends jobs and exits when the engine fails. handler.py (app.py), the benchmark and the
tests all start it here."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpworker import timeline
from tpworker.config.settings import Settings
from tpworker.startup.plan import StartPlan

if TYPE_CHECKING:  # imported when the worker starts: they import vLLM
    from tpworker.serving.engine import BesideStart, Engine
    from tpworker.serving.lifecycle import Lifecycle
    from tpworker.serving.watchdog import Watchdog
    from tpworker.serving.worker import Worker
    from tpworker.vllm_bridge.types import ModelConfig

log = logging.getLogger(__name__)


class SetEnvironment:
    """The variables vLLM reads (the plan's environment: HF_HUB_OFFLINE, the CPU and compile-cache settings),
    set in this process once, before any thread or process that imports vLLM starts, so that each of them
    (the engine's processes, the OpenAI layer's build beside the start, the structured-output probe's fork
    server) sees the same values for the engine's whole life. restore() puts back what was there, for a
    process that starts another worker after this one (the tests)."""

    def __init__(self, variables: Mapping[str, str]):
        self._saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)
        if variables:
            log.info("Set for vLLM: %s", ", ".join(f"{name}={value}" for name, value in sorted(variables.items())))

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved = {}


@dataclass(frozen=True)
class StartedWorker:
    engine: Engine
    worker: Worker
    watchdog: Watchdog | None  # None when not watched
    environment: SetEnvironment

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()  # the engine's processes are about to exit on purpose
        self.worker.close()
        self.environment.restore()


def start_worker(
    settings: Settings, plan: StartPlan, *, watched: bool = True, lifecycle: Lifecycle | None = None
) -> StartedWorker:
    """Start the engine and build the worker on it (raises EngineStartError). `watched`: run the
    watchdog, which exits the process when the engine fails (tests that run the worker inside the
    test process leave it off; the tests that kill engine processes run handler.py itself).
    `lifecycle`: the worker's state machine, in its starting state (a new one when None)."""
    from tpworker.serving import structured_check
    from tpworker.serving.watchdog import Watchdog
    from tpworker.serving.worker import build_worker
    from tpworker.vllm_bridge import openai_server

    log.info("Settings: %s", settings.shown())
    chat_template = plan.openai_options.get("chat_template")
    openai_server.keep_logging_through_the_server_import()

    def prepare_openai_layer(model_config: ModelConfig) -> openai_server.PreparedApp | None:
        return openai_server.prepare(model_config, chat_template, plan.model, plan.served_names, plan.openai_options)

    environment = SetEnvironment(plan.environment)
    try:
        structured_check.start_fork_server()  # imports for the structured-output probe, beside the engine's start
        engine = start_engine(settings, plan, prepare_openai_layer)
    except BaseException:
        environment.restore()
        raise
    worker = build_worker(engine, settings.worker, plan.model, plan.served_names, plan.openai_options, lifecycle)
    timeline.mark("worker built")
    _log_start_time(settings, plan)
    watchdog = None
    if watched:
        watchdog = Watchdog(engine, worker, settings.worker.engine_stall_timeout)
        watchdog.start()
    return StartedWorker(engine, worker, watchdog, environment)


def start_engine(settings: Settings, plan: StartPlan, beside_start: BesideStart) -> Engine:
    """The engine, started from the plan; when vLLM refuses it for want of KV cache or memory and its
    message says which setting to lower (START_MEMORY_RETRY), started once more with that setting lowered,
    and a warning that says how to set it for good."""
    from tpworker.serving.engine import Engine, EngineStartError, kill_engine_processes

    try:
        return Engine.start(plan.engine_args, beside_start=beside_start)
    except EngineStartError as e:
        fix = e.memory_fix
        if fix is None:
            raise
        variable = settings.engine_source(fix.argument)
        setting = f"{variable}={fix.value}"
        if variable in ("VLLM_CONFIG_FILE", "VLLM_EXTRA_ARGS"):  # set there as vllm serve's option
            setting = f"{fix.argument.replace('_', '-')} {fix.value} in {variable}"
        if not settings.worker.start_memory_retry:
            e.args = (f"{e} Set {setting}, because {fix.why} (START_MEMORY_RETRY=true would do so at start).",)
            raise
        before = plan.engine_args.get(fix.argument)
        log.warning(
            "vLLM could not start: %s. Starting once more with %s (was %s), because %s. Set it so to start "
            "without this retry (START_MEMORY_RETRY=false fails the start instead).",
            e.failure,
            setting,
            "vLLM's default" if before is None else before,
            fix.why,
        )
        kill_engine_processes()  # what the failed start left, so that its memory is free
        try:
            return Engine.start({**plan.engine_args, fix.argument: fix.value}, beside_start)
        except EngineStartError as again:
            again.args = (f"{again} (after a retry with {setting}; the first start: {e.failure})",)
            raise


def _log_start_time(settings: Settings, plan: StartPlan) -> None:
    """How long the start took, from the process's own start, against RunPod's limit and the estimate."""
    import psutil

    took = time.time() - psutil.Process().create_time()
    limit = settings.worker.runpod_init_timeout
    estimated = f"; estimated {plan.start_estimate.seconds:.0f} s" if plan.start_estimate else ""
    log.info(
        "Started in %.1f s since the process began, of the %d s RUNPOD_INIT_TIMEOUT allows%s.", took, limit, estimated
    )
