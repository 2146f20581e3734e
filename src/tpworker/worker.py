"""The worker: one engine, many jobs. Every job ends with its outputs or exactly one error output;
no exception or traceback reaches RunPod, and the worker keeps serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from tpworker import native, vllm_bridge
from tpworker.engine import Engine
from tpworker.jobs import BatchPolicy, JobError, parse_job
from tpworker.settings import WorkerSettings

log = logging.getLogger(__name__)


def batch_policy(settings: WorkerSettings) -> BatchPolicy:
    """Stream batching from DEFAULT_BATCH_SIZE, MIN_BATCH_SIZE, BATCH_SIZE_GROWTH_FACTOR."""
    return BatchPolicy(
        max_size=settings.default_batch_size,
        min_size=min(settings.min_batch_size, settings.default_batch_size),
        growth_factor=settings.batch_size_growth_factor,
    )


class Worker:
    def __init__(self, engine: Engine, settings: WorkerSettings):
        self.engine = engine
        self.settings = settings
        self.default_batching = batch_policy(settings)

    def concurrency(self, current: int = 0) -> int:
        """RunPod's concurrency_modifier: how many jobs this worker takes at once."""
        return self.settings.max_concurrency

    async def handle(self, job: Any) -> AsyncIterator[dict]:
        job_id = str(job.get("id", "job")) if isinstance(job, dict) else "job"
        try:
            if self.engine.dead:
                raise JobError("The engine has stopped; this worker is restarting.", type="ServiceUnavailableError", code=503)
            request = parse_job(job, default_batching=self.default_batching, max_n=self.settings.max_n)
            async for chunk in native.generate(
                self.engine,
                request,
                chat_template=self.settings.custom_chat_template,
                default_max_tokens=self.settings.default_max_tokens,
                job_id=job_id,
            ):
                yield chunk
        except JobError as e:
            log.info("Job %s refused: %s", job_id, e.message)
            yield e.to_output()
        except Exception as e:  # anything else is our fault or the engine's, never the caller's
            if vllm_bridge.is_engine_dead(e):
                log.error("Job %s failed: the engine died.", job_id)
                yield JobError("The engine has stopped; this worker is restarting.", type="ServiceUnavailableError", code=503).to_output()
                return
            log.exception("Job %s failed", job_id)
            yield JobError(f"Internal error: {type(e).__name__}: {e}", type="InternalServerError", code=500).to_output()
