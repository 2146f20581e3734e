"""The worker: one engine, many jobs. Every job ends with its outputs or exactly one error output;
no exception or traceback reaches RunPod, and the worker keeps serving.

The worker also knows which jobs are in flight, so that it can end them all with an error when the
engine fails (the watchdog) or when a SIGTERM's grace period runs out (`shutdown`), and it bounds each
job's time (REQUEST_TIMEOUT). Whether it takes jobs is its lifecycle's to say (serving/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
import time
from collections.abc import AsyncGenerator
from types import FrameType
from typing import Any, cast

from tpworker import timeline
from tpworker.config.variables import WorkerSettings
from tpworker.serving import native
from tpworker.serving.batching import BatchPolicy
from tpworker.serving.engine import Engine
from tpworker.serving.job_errors import JobError, service_unavailable
from tpworker.serving.job_input import JobOutput, OpenAIRequest, parse_job
from tpworker.serving.lifecycle import Lifecycle, State
from tpworker.serving.limits import Limits
from tpworker.serving.openai_routes import OpenAIRoutes
from tpworker.serving.structured_check import StructuredOutputCheck
from tpworker.vllm_bridge import async_llm, openai_server

log = logging.getLogger(__name__)


OPENAI_WARMUP_DELAY_S = 1.0
# The warm-up request: a chat job as users send it, streamed, with a prefill and a decode step.
WARMUP_INPUT = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "sampling_params": {"max_tokens": 2, "temperature": 0},
    "stream": True,
}
ENGINE_STOPPED = "The engine has stopped; this worker is restarting. Retry the request."


async def _until_stopped(
    outputs: AsyncGenerator[JobOutput, None], stop: asyncio.Future[None]
) -> AsyncGenerator[JobOutput, None]:
    """`outputs`, until `stop` gets an exception: then the pending step is cancelled (which aborts
    the engine request) and that exception is raised. Cancelling the job does the same."""
    try:
        while True:
            step = asyncio.ensure_future(anext(outputs))
            try:
                await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
            if step.cancelled():
                raise cast(BaseException, stop.exception())  # stop ended first: with its error
            try:
                value = step.result()
            except StopAsyncIteration:
                return
            yield value
    finally:
        await outputs.aclose()


def timed_out(seconds: float) -> JobError:
    return JobError(
        f"The job ran for more than REQUEST_TIMEOUT={seconds:g} s and was stopped (its engine request aborted). "
        "Ask for fewer tokens, or raise REQUEST_TIMEOUT.",
        type="RequestTimeoutError",
        code=408,
    )


class Worker:
    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        openai: OpenAIRoutes,
        chat: native.ChatOptions,
        lifecycle: Lifecycle | None = None,
        structured: StructuredOutputCheck | None = None,
    ) -> None:
        self.engine = engine
        self.structured = structured
        self.settings = settings
        self.openai = openai
        self.chat = chat
        self.default_batching = BatchPolicy.from_settings(settings)
        self.limits = Limits.from_settings(settings)
        self.lifecycle = lifecycle or Lifecycle()
        self.lifecycle.on_change(self._state_changed)
        self._in_flight: dict[int, asyncio.Future[None]] = {}  # one stop future per running job
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._openai_build: asyncio.Task[None] | None = None  # held so that the task is not collected mid-build
        self._idle = asyncio.Event()  # set while no job is in flight
        self._idle.set()
        self._loop_start: asyncio.Task[None] | None = None  # begun by the first job on runpod's own loop

    def close(self) -> None:
        """Shut the engine down; the OpenAI serving objects hold it too, so drop them first."""
        self.lifecycle.post(State.STOPPED, "the worker is shutting down")
        if self.structured is not None:
            self.structured.close()
        self.openai.close()
        self.engine.shutdown()

    def concurrency(self, current: int = 0) -> int:
        """RunPod's concurrency_modifier: how many jobs this worker takes at once."""
        return self.settings.max_concurrency

    def loop_started(self) -> asyncio.Task[None] | None:
        """Called by the job loop once it runs (jobloop.install), inside the event loop that will
        serve the jobs and after RunPod's SDK has installed its SIGTERM handler: chain ours onto
        it, and start the warm-up request and the OpenAI serving layer's build in that loop (vLLM's
        AsyncLLM serves the event loop of its first request only, so neither can run before it).
        Returns the warm-up, which the job loop awaits before it takes a job (None: already started)."""
        if self.lifecycle.state is not State.STARTING:
            return None
        self._loop = asyncio.get_running_loop()
        self.lifecycle.bind(self._loop)
        self._hook_sigterm()
        if self.settings.engine_warmup:
            self.lifecycle.post(State.WARMING_UP, "the engine is up; one short request before the first job")
        return self._loop.create_task(self.warm_up())

    async def started_in_this_loop(self) -> None:
        """For runpod's own job loop (JOB_LOOP=sdk), which has no start hook: the first job runs what
        loop_started runs, and every job waits for the warm-up it began."""
        if self._loop_start is None:
            self._loop_start = self.loop_started()
        if self._loop_start is not None:
            await asyncio.shield(self._loop_start)

    async def warm_up(self) -> None:
        """Before the first job (the job loop awaits this). With ENGINE_WARMUP: one short chat job through
        the job path and the engine, while vLLM's OpenAI serving layer is built (that holds the event loop
        for about a second while the engine computes in its own processes, so the two overlap): the first
        user's job pays for neither. Without it, the OpenAI layer is built once the worker is first idle
        (an OpenAI job that comes first builds it itself)."""
        if self.settings.engine_warmup:
            await asyncio.gather(self._warm_request(), self._prepare_openai())
        else:
            self._openai_build = asyncio.create_task(self._prepare_openai(OPENAI_WARMUP_DELAY_S))
        if self.lifecycle.state in (State.STARTING, State.WARMING_UP):
            self.lifecycle.post(State.SERVING, "ready for jobs")
        if self.structured is not None:
            self.structured.start()  # its process imports vLLM (seconds of a core): after the warm-up, not beside
        log.info("Start-up timeline: %s.", timeline.TIMELINE.summary())

    async def _warm_request(self) -> None:
        """A model without a chat template is warmed up with a prompt; a failing warm-up is logged and
        the worker serves anyway. Pooling models are not sent one (their routes' first request is fast)."""
        if not self.engine.generates:
            return
        began = time.monotonic()
        for form in (WARMUP_INPUT, {**WARMUP_INPUT, "messages": None, "prompt": "Hello"}):
            job = {"id": "warm-up", "input": {k: v for k, v in form.items() if v is not None}}
            outputs = [chunk async for chunk in self._run(job)]
            error = next((o["error"] for o in outputs if isinstance(o, dict) and "error" in o), None)
            if error is None:
                timeline.mark("warm-up request done", "a chat job" if "messages" in job["input"] else "a prompt job")
                log.info("Warm-up request done in %.2f s.", time.monotonic() - began)
                return
        log.warning("The warm-up request failed (%s); serving without it.", error)

    async def _prepare_openai(self, after_idle_s: float = 0.0) -> None:
        """vLLM's OpenAI serving objects take about a second to build (on CPU here), most of it holding
        the event loop. `after_idle_s`: built that long after the loop starts and once no job is in
        flight, so that neither the job usually waiting when a worker starts nor a running stream waits."""
        if after_idle_s:
            await asyncio.sleep(after_idle_s)  # lets the job loop take a job waiting at start
            await self._idle.wait()
        started = time.monotonic()
        try:
            await self.openai.server()
        except Exception:
            log.exception("Building vLLM's OpenAI serving layer failed; the first OpenAI job will try again.")
            return
        timeline.mark("OpenAI layer built")
        log.info("OpenAI routes ready (vLLM's serving layer built in %.2f s).", time.monotonic() - started)

    # ---------------------------------------------------------------- failure and shutdown

    def jobs_in_flight(self) -> int:
        return len(self._in_flight)

    def stop_jobs(self, error: JobError, reason: str = "jobs stopped") -> None:
        """End every in-flight job with `error`, and refuse new ones with it (the worker stops). Any thread."""
        self.lifecycle.post(State.STOPPED, reason, error)

    def _state_changed(self, state: State, error: JobError | None) -> None:
        if state is State.STOPPED and error is not None:
            for stop in self._in_flight.values():
                if not stop.done():
                    stop.set_exception(error)

    def engine_failed(self, reason: str) -> None:
        self.stop_jobs(service_unavailable(reason), "the engine failed")

    def _hook_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread (tests run jobs elsewhere)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)  # RunPod's: stop taking jobs, drain the ones taken
            self.shutdown()

        signal.signal(signal.SIGTERM, on_sigterm)

    def shutdown(self) -> None:
        """SIGTERM: jobs already taken get SHUTDOWN_GRACE_SECONDS to finish; then those still
        running end with an error, so that the job loop can drain and the process exit 0."""
        grace = self.settings.shutdown_grace_seconds
        self.lifecycle.post(
            State.DRAINING, f"SIGTERM: finishing {self.jobs_in_flight()} in-flight job(s) within {grace:g} s"
        )
        error = service_unavailable(
            f"The worker was stopped and this job did not finish within its {grace:g} s grace period "
            f"(SHUTDOWN_GRACE_SECONDS). Retry the request."
        )
        if self._loop is not None:
            reason = f"the {grace:g} s grace period after SIGTERM is over"
            self._loop.call_soon_threadsafe(self._loop.call_later, grace, self.stop_jobs, error, reason)

    # ---------------------------------------------------------------- jobs

    async def handle(self, job: Any) -> AsyncGenerator[JobOutput, None]:
        first_job = timeline.TIMELINE.mark_once("first job taken")
        async for chunk in self._run(job):
            if first_job and timeline.TIMELINE.mark_once("first output sent"):
                log.info("Start-up timeline to the first job's first output: %s.", timeline.TIMELINE.summary())
            yield chunk

    async def _run(self, job: Any) -> AsyncGenerator[JobOutput, None]:
        job_id = str(job.get("id", "job")) if isinstance(job, dict) else "job"
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():  # no job loop (tests, handler.py imported): theirs
            self._loop = loop
            self.lifecycle.bind(loop)
        key, stop = next(self._ids), loop.create_future()
        self._in_flight[key] = stop
        self._idle.clear()
        timeout = self.settings.request_timeout
        deadline = loop.call_later(timeout, _end, stop, timed_out(timeout))
        try:
            if refusal := self.lifecycle.refusal():
                raise refusal
            if self.engine.dead:
                raise service_unavailable(ENGINE_STOPPED)
            request = parse_job(
                job,
                default_batching=self.default_batching,
                limits=self.limits,
                native_output=self.settings.native_output_format,
            )
            outputs: AsyncGenerator[JobOutput, None]
            if isinstance(request, OpenAIRequest):
                outputs = self.openai.run(request)
            elif not self.engine.generates:
                raise JobError(
                    "This worker runs its model as a pooling model (RUNNER / CONVERT), which generates no text: "
                    'send a route job instead, e.g. {"route": "/v1/embeddings", "body": {"input": "..."}}.',
                    param="input",
                )
            else:
                outputs = native.generate(
                    self.engine,
                    request,
                    lora=await self.openai.adapter(request.model) if request.model else None,
                    chat=self.chat,
                    limits=self.limits,
                    default_max_tokens=self.settings.default_max_tokens,
                    job_id=job_id,
                    structured=self.structured,
                )
            async for chunk in _until_stopped(outputs, stop):
                yield chunk
        except JobError as e:
            log.info("Job %s refused: %s", job_id, e.message)
            yield e.to_output()
        except Exception as e:  # anything else is our fault or the engine's, never the caller's
            if async_llm.is_engine_dead(e):
                log.error("Job %s failed: the engine died.", job_id)
                yield service_unavailable(ENGINE_STOPPED).to_output()
                return
            log.exception("Job %s failed", job_id)
            yield JobError(f"Internal error: {type(e).__name__}: {e}", type="InternalServerError", code=500).to_output()
        finally:
            deadline.cancel()
            del self._in_flight[key]
            if not self._in_flight:
                self._idle.set()
            if not stop.done():
                stop.cancel()
            elif not stop.cancelled():
                stop.exception()  # retrieved, so asyncio does not warn about it


def _end(stop: asyncio.Future[None], error: JobError) -> None:
    if not stop.done():
        stop.set_exception(error)


def build_worker(
    engine: Engine,
    settings: WorkerSettings,
    model: str,
    served_names: list[str],
    openai_options: dict[str, Any],
    lifecycle: Lifecycle | None = None,
) -> Worker:
    """The worker handler.py runs: native jobs and OpenAI routes over one engine, sharing the
    chat template options (CHAT_TEMPLATE / CUSTOM_CHAT_TEMPLATE, DEFAULT_CHAT_TEMPLATE_KWARGS) and the
    structured-output check (STRUCTURED_OUTPUT_TIMEOUT)."""
    # (the fake engine of the fast tests has no vLLM configuration, and no structured output to check)
    config = engine.vllm_config
    structured = StructuredOutputCheck(config, settings.structured_output_timeout) if config is not None else None
    openai = OpenAIRoutes(
        engine,
        model,
        served_names,
        openai_options,
        BatchPolicy.from_settings(settings),
        Limits.from_settings(settings),
        settings.raw_openai_output,
        structured,
    )
    chat = native.ChatOptions(
        template=openai_server.load_chat_template(openai_options.get("chat_template")),
        template_kwargs=dict(openai_options.get("default_chat_template_kwargs") or {}),
    )
    return Worker(engine, settings, openai, chat, lifecycle, structured)
