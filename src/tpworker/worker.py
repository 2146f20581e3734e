"""The worker: one engine, many jobs. Every job ends with its outputs or exactly one error output;
no exception or traceback reaches RunPod, and the worker keeps serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from tpworker import native, vllm_bridge
from tpworker.engine import Engine
from tpworker.jobs import BatchPolicy, JobError, OpenAIRequest, parse_job
from tpworker.openai_routes import OpenAIRoutes
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
    def __init__(self, engine: Engine, settings: WorkerSettings, openai: OpenAIRoutes,
                 chat: native.ChatOptions):
        self.engine = engine
        self.settings = settings
        self.openai = openai
        self.chat = chat
        self.default_batching = batch_policy(settings)

    def close(self) -> None:
        """Shut the engine down; the OpenAI serving objects hold it too, so drop them first."""
        self.openai.close()
        self.engine.shutdown()

    def concurrency(self, current: int = 0) -> int:
        """RunPod's concurrency_modifier: how many jobs this worker takes at once."""
        return self.settings.max_concurrency

    async def handle(self, job: Any) -> AsyncIterator:
        job_id = str(job.get("id", "job")) if isinstance(job, dict) else "job"
        try:
            if self.engine.dead:
                raise JobError("The engine has stopped; this worker is restarting.", type="ServiceUnavailableError", code=503)
            request = parse_job(job, default_batching=self.default_batching, max_n=self.settings.max_n)
            if isinstance(request, OpenAIRequest):
                outputs = self.openai.run(request)
            else:
                outputs = native.generate(self.engine, request, chat=self.chat,
                                          default_max_tokens=self.settings.default_max_tokens, job_id=job_id)
            async for chunk in outputs:
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


def build_worker(engine: Engine, settings: WorkerSettings, model: str, served_names: list[str],
                 openai_options: dict) -> Worker:
    """The worker handler.py runs: native jobs and OpenAI routes over one engine, sharing the
    chat template options (CHAT_TEMPLATE / CUSTOM_CHAT_TEMPLATE, DEFAULT_CHAT_TEMPLATE_KWARGS)."""
    openai = OpenAIRoutes(engine, model, served_names, openai_options, batch_policy(settings), settings.raw_openai_output)
    chat = native.ChatOptions(
        template=vllm_bridge.load_chat_template(openai_options.get("chat_template")),
        template_kwargs=dict(openai_options.get("default_chat_template_kwargs") or {}),
    )
    return Worker(engine, settings, openai, chat)
