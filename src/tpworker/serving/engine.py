"""The vLLM engine of this worker process: one AsyncLLM, started once, shared by every job."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeAlias

import psutil
from vllm import AsyncEngineArgs, SamplingParams

from tpworker import timeline
from tpworker.errors import StartRefused, in_one_line
from tpworker.vllm_bridge import async_llm, prompts, start_failures, start_records

if TYPE_CHECKING:
    from tpworker.vllm_bridge.openai_server import PreparedApp
    from tpworker.vllm_bridge.types import AsyncLLM, EngineInput, LoRARequest, ModelConfig, RequestOutput, VllmConfig

log = logging.getLogger(__name__)

# start()'s beside_start: the OpenAI layer prepared from the model's configuration (None: nothing to prepare).
BesideStart: TypeAlias = "Callable[[ModelConfig], PreparedApp | None]"


class EngineStartError(StartRefused):
    """vLLM refused the configuration or could not load the model. `failure`: the exception vLLM's process
    logged ('ValueError: ...'), when it logged one; `memory_fix`: the setting its message says to lower."""

    def __init__(self, message: str, *, retryable: bool = False, failure: str | None = None):
        super().__init__(message, retryable=retryable)
        self.failure = failure
        self.memory_fix = start_failures.memory_fix(failure)


class _Steps:
    """When the engine core last reported a step, and how many it has reported (read by the
    watchdog's thread)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.reported = 0

    def touch(self) -> None:
        self.last = time.monotonic()

    def report(self) -> None:
        self.reported += 1
        self.touch()


def _engine_processes() -> dict[psutil.Process, str]:
    """vLLM's processes under this one, with their names: the engine core and, with TP/PP > 1 on
    one node, a process per rank (vLLM names them VLLM::EngineCore, VLLM::Worker_TP0, ...)."""
    found: dict[psutil.Process, str] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if (name := child.name()).startswith("VLLM::"):
                found[child] = name
        except psutil.Error:
            pass
    return found


def kill_engine_processes() -> None:
    """SIGKILL what is left of vLLM's processes under this one (after a start that failed)."""
    for process in _engine_processes():
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def _beside_the_start(
    work: BesideStart, model_config: ModelConfig, started: threading.Event
) -> Future[PreparedApp | None]:
    """Run `work(model_config)` in a thread once vLLM's engine processes are up (the main process
    then only waits for them; before that it builds vLLM's tokenizer and processors itself) or the
    start has ended. Its result: what work returned; None when it failed (it only saves time later)."""
    done: Future[PreparedApp | None] = Future()

    def run() -> None:
        while not started.wait(0.05) and not _engine_processes():
            pass
        began = time.monotonic()
        result: PreparedApp | None = None
        try:
            result = work(model_config)
            log.info("%s beside the engine's start: %.2f s.", work.__name__, time.monotonic() - began)
        except Exception as e:
            log.info("%s beside the engine's start failed (done later instead): %s", work.__name__, e)
        done.set_result(result)

    threading.Thread(target=run, name="beside-engine-start", daemon=True).start()
    return done


class Engine:
    def __init__(
        self,
        llm: AsyncLLM,
        max_model_len: int,
        tensor_parallel_size: int,
        pipeline_parallel_size: int,
        steps: _Steps | None = None,
        prepared: Future[PreparedApp | None] | None = None,
    ) -> None:
        self._llm: AsyncLLM | None = llm
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.pipeline_parallel_size = pipeline_parallel_size
        self._steps = steps or _Steps()
        self.processes = _engine_processes()
        # the work start() ran beside the engine's start: wait for it before relying on what it did
        self.prepared = prepared

    @classmethod
    def start(
        cls,
        engine_args: Mapping[str, Any],
        beside_start: BesideStart | None = None,
    ) -> Engine:
        """Start vLLM: validate the configuration, spawn the engine core and its ranks, load the
        weights. The variables vLLM's processes must see are already set (startup.start sets them once,
        before any thread that imports vLLM). `beside_start(model_config)` runs in a thread while the
        engine's processes start (the log names it by its __name__); the engine's `prepared` says when
        it is done, with its result.
        Call from the main process, behind an `if __name__ == "__main__"` guard."""
        args = AsyncEngineArgs(**engine_args)
        began = time.perf_counter()
        with start_records.kept(args) as records:
            try:
                config = async_llm.create_engine_config(args)
            except Exception as e:  # vLLM raises ValueError, pydantic errors, OSError, ...
                raise EngineStartError(f"vLLM refused the engine configuration: {in_one_line(e)}") from e
            timeline.mark("engine configured")
            steps, started = _Steps(), threading.Event()
            prepared = _beside_the_start(beside_start, config.model_config, started) if beside_start else None
            try:
                llm = async_llm.start_async_llm(config, args, on_engine_step=steps.report)
            except Exception as e:
                failure = records.failure()
                cause = failure or f"{in_one_line(e)}; the cause is in vLLM's log lines above"
                raise EngineStartError(
                    f"vLLM could not start the engine: {cause}",
                    retryable=start_failures.restart_may_fix(failure),
                    failure=failure,
                ) from e
            finally:
                started.set()
            timeline.mark("engine ready")
            parallel = config.parallel_config
            for phase, at, detail in records.marks(parallel.tensor_parallel_size * parallel.pipeline_parallel_size):
                timeline.mark(phase, detail, at)
        log.info("vLLM engine ready in %.1f s", time.perf_counter() - began)
        return cls(
            llm,
            config.model_config.max_model_len,
            parallel.tensor_parallel_size,
            parallel.pipeline_parallel_size,
            steps,
            prepared,
        )

    @property
    def llm(self) -> AsyncLLM:
        """The AsyncLLM itself, for vLLM's OpenAI serving layer (vllm_bridge.openai_server.OpenAIServer)."""
        return self._live()

    def _live(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("the engine has been shut down")
        return self._llm

    @property
    def vllm_config(self) -> VllmConfig:
        """vLLM's whole configuration of this engine (the structured-output probe builds on it)."""
        return self._live().vllm_config

    @property
    def generates(self) -> bool:
        """False when the model runs as a pooling model: then only the pooling routes serve it."""
        answer: bool = async_llm.generates(self._live())
        return answer

    async def render_chat(
        self, messages: list[dict[str, Any]], chat_template: str | None, template_kwargs: dict[str, Any]
    ) -> EngineInput:
        return await prompts.render_chat(self._live(), messages, chat_template, template_kwargs, self.max_model_len)

    async def render_text(self, prompt: str) -> EngineInput:
        return await prompts.render_text(self._live(), prompt, self.max_model_len)

    def generate(
        self, engine_input: EngineInput, params: SamplingParams, request_id: str, lora: LoRARequest | None = None
    ) -> AsyncGenerator[RequestOutput, None]:
        """RequestOutputs as the engine produces them (through the LoRA adapter `lora`, a vLLM
        LoRARequest, when given). Closing or cancelling the iteration aborts the request in the engine."""
        return self._live().generate(engine_input, params, request_id, lora_request=lora)

    async def abort(self, request_id: str) -> None:
        await self._live().abort(request_id)

    def unfinished_requests(self) -> int:
        return self._live().get_num_unfinished_requests()

    @property
    def dead(self) -> bool:
        return self._llm is None or self._llm.errored

    # ---- health, read by the watchdog from its own thread

    def lost_processes(self) -> list[str]:
        """vLLM processes started with the engine that have since exited: '<name> (pid N)'."""
        lost: list[str] = []
        for process, name in self.processes.items():
            try:
                gone = not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                gone = True
            if gone:
                lost.append(f"{name} (pid {process.pid})")
        return lost

    @property
    def has_stepped(self) -> bool:
        """The engine core has reported a step since it started."""
        return self._steps.reported > 0

    def seconds_without_progress(self) -> float:
        """How long requests have been in flight with no engine step; 0 when idle."""
        if self._llm is None or self.unfinished_requests() == 0:
            self._steps.touch()  # an idle engine is not stalled; the clock starts with the next request
            return 0.0
        return time.monotonic() - self._steps.last

    def kill_processes(self) -> None:
        """SIGKILL vLLM's processes (the engine core and every rank): for an engine that is dead or
        hung, where a clean shutdown would wait on it."""
        for process in self.processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        kill_engine_processes()  # those started since, too

    def shutdown(self) -> None:
        """Stop the engine core and every rank. Idempotent."""
        if self._llm is not None:
            self._llm.shutdown()
            # vLLM's AsyncLLM shuts down again when collected; let that happen now, not at
            # interpreter exit when the modules it needs are gone.
            self._llm = None
