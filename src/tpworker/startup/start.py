"""The one way a worker starts from its plan: the engine, the worker in front of it, and the
watchdog that ends jobs and exits when the engine fails. handler.py (app.py), the benchmark and the
tests all start it here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tpworker import timeline
from tpworker.config.settings import Settings
from tpworker.startup.plan import StartPlan

if TYPE_CHECKING:  # imported when the worker starts: they import vLLM
    from tpworker.serving.engine import Engine
    from tpworker.serving.watchdog import Watchdog
    from tpworker.serving.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartedWorker:
    engine: Engine
    worker: Worker
    watchdog: Watchdog | None  # None when not watched

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()  # the engine's processes are about to exit on purpose
        self.worker.close()


def start_worker(settings: Settings, plan: StartPlan, *, watched: bool = True) -> StartedWorker:
    """Start the engine and build the worker on it (raises EngineStartError). `watched`: run the
    watchdog, which exits the process when the engine fails (tests that run the worker inside the
    test process leave it off; the tests that kill engine processes run handler.py itself)."""
    from tpworker.serving.engine import Engine
    from tpworker.serving.watchdog import Watchdog
    from tpworker.serving.worker import build_worker
    from tpworker.vllm_bridge import openai_server

    log.info("Settings: %s", settings.shown())
    chat_template = plan.openai_options.get("chat_template")
    openai_server.keep_logging_through_the_server_import()

    def prepare_openai_layer(model_config) -> openai_server.PreparedApp | None:
        return openai_server.prepare(model_config, chat_template, plan.model, plan.served_names, plan.openai_options)

    engine = Engine.start(plan.engine_args, plan.environment, beside_start=prepare_openai_layer)
    worker = build_worker(engine, settings.worker, plan.model, plan.served_names, plan.openai_options)
    timeline.mark("worker built")
    _log_start_time(settings, plan)
    watchdog = None
    if watched:
        watchdog = Watchdog(engine, worker, settings.worker.engine_stall_timeout)
        watchdog.start()
    return StartedWorker(engine, worker, watchdog)


def _log_start_time(settings: Settings, plan: StartPlan) -> None:
    """How long the start took, from the process's own start, against RunPod's limit and the estimate."""
    import psutil

    took = time.time() - psutil.Process().create_time()
    limit = settings.worker.runpod_init_timeout
    estimated = f"; estimated {plan.start_estimate.seconds:.0f} s" if plan.start_estimate else ""
    log.info(
        "Started in %.1f s since the process began, of the %d s RUNPOD_INIT_TIMEOUT allows%s.", took, limit, estimated
    )
