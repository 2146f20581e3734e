"""The one way a worker starts from its plan: the engine, the worker in front of it, and the
watchdog that ends jobs and exits when the engine fails. handler.py (app.py), the benchmark and the
tests all start it here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    log.info("Settings: %s", settings.shown())
    engine = Engine.start(plan.engine_args, plan.environment)
    worker = build_worker(engine, settings.worker, plan.model, plan.served_names, plan.openai_options)
    watchdog = None
    if watched:
        watchdog = Watchdog(engine, worker, settings.worker.engine_stall_timeout)
        watchdog.start()
    return StartedWorker(engine, worker, watchdog)
