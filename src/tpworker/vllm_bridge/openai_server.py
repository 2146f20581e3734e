"""vLLM's own OpenAI server (its FastAPI application and serving objects) on the worker's engine,
called in process (no HTTP hop)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    from fastapi import FastAPI
    from vllm import SamplingParams
    from vllm.config import ModelConfig
    from vllm.engine.protocol import EngineClient, StreamingInput
    from vllm.exceptions import VLLMValidationError
    from vllm.inputs import EngineInput, PromptType
    from vllm.lora.request import LoRARequest
    from vllm.outputs import PoolingRequestOutput, RequestOutput
    from vllm.pooling_params import PoolingParams
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tasks import SupportedTask
    from vllm.v1.engine import EngineCoreRequest

from tpworker.vllm_bridge.asgi_call import call_asgi
from tpworker.vllm_bridge.async_llm import is_engine_dead
from tpworker.vllm_bridge.serve_flags import server_namespace


def load_chat_template(template: str | None) -> str | None:
    """A chat template given as a file path or as the template itself (vLLM's rule)."""
    from vllm.renderers.chat_utils import load_chat_template as load

    return load(template)


def keep_logging_through_the_server_import() -> None:
    """vLLM's server imports model_hosting_container_standards, which sets the root logger and its
    handlers to ERROR when it is first imported (SAGEMAKER_CONTAINER_LOG_LEVEL's default), which would
    silence every line this worker logs. Call once, on the thread that configured logging, before the
    build: the module is imported here with the levels put back, and the build (in another thread,
    while other threads log) changes nothing."""
    root = logging.getLogger()
    levels = [(root, root.level)] + [(handler, handler.level) for handler in root.handlers]
    import model_hosting_container_standards.logging_config  # noqa: F401

    for logger_or_handler, level in levels:
        logger_or_handler.setLevel(level)


@dataclass(frozen=True)
class PreparedApp:
    """vLLM's HTTP application built beside the engine's start, for the tasks a model of its runner
    serves; OpenAIServer.create uses it when the engine reports those tasks."""

    app: FastAPI
    args: argparse.Namespace
    tasks: tuple[SupportedTask, ...]


def prepare(
    model_config: ModelConfig, chat_template: str | None, model: str, served_names: list[str], options: dict[str, Any]
) -> PreparedApp | None:
    """What building the OpenAI layer does that needs no engine, done beforehand (beside the engine's
    start, in a thread; on this machine's CPU the build took 1.75 s, all of it holding the event loop):
    - with no CHAT_TEMPLATE given, look for a chat template in the model's processor config. vLLM's
      renderer warm-up, part of the build, loads the model's processor for that (a second tokenizer:
      1.1 s); vLLM keeps what it found in a cache keyed by the tokenizer's path, which this fills;
    - build vLLM's application (its route modules' imports and FastAPI routes: 0.35 s) for the tasks
      a generating model serves, ("generate",). None for other runners: theirs depend on the model;
    - import the rest of what the build imports (the serving objects' modules; vLLM's kernel registry,
      which their config fingerprint imports: 0.1 s)."""
    import vllm.entrypoints.launchers.api_server.app_state  # noqa: F401
    from vllm.platforms import current_platform

    current_platform.import_ir_kernels()
    if chat_template is None and not model_config.skip_tokenizer_init:
        from vllm.renderers.hf import resolve_chat_template
        from vllm.tokenizers.registry import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(model_config)  # the renderer's own (cached) tokenizer
        if hasattr(tokenizer, "name_or_path"):  # Hugging Face tokenizers; others have no processor template
            resolve_chat_template(tokenizer, None, None, model_config=model_config)
    if model_config.runner_type != "generate":
        return None
    args = _server_args(options, model, served_names)
    tasks: tuple[SupportedTask, ...] = ("generate",)
    return PreparedApp(_build_app(args, tasks, model_config), args, tasks)


def application(
    prepared: PreparedApp | None,
    tasks: tuple[SupportedTask, ...],
    model_config: ModelConfig,
    model: str,
    served_names: list[str],
    options: dict[str, Any],
) -> tuple[FastAPI, argparse.Namespace]:
    """vLLM's application and its arguments for the tasks the engine serves: the prepared one when it
    was built for them, else one built now."""
    if prepared is not None and prepared.tasks == tasks:
        return prepared.app, prepared.args
    args = _server_args(options, model, served_names)
    return _build_app(args, tasks, model_config), args


def _server_args(options: dict[str, Any], model: str, served_names: list[str]) -> argparse.Namespace:
    args = server_namespace(options)
    args.model, args.served_model_name = model, served_names
    return args


def _build_app(args: argparse.Namespace, tasks: tuple[SupportedTask, ...], model_config: ModelConfig) -> FastAPI:
    from vllm.entrypoints.launchers.app import build_app

    root, level = logging.getLogger(), logging.getLogger().level
    app = build_app(args, tasks, model_config)
    # build_app's SageMaker bootstrap sets the root logger to ERROR when keep_logging_through_the_server_import
    # was not called first, which would silence every log line of this worker from here on
    root.setLevel(level)
    return app


@dataclass(frozen=True)
class OpenAIReply:
    """One OpenAI request's answer: a JSON body with its HTTP status, or (status 200) a stream of
    SSE event strings."""

    status: int
    body: dict[str, Any] | None = None
    events: AsyncGenerator[str, None] | None = None


# (structured outputs, max_tokens) -> (constraint field, why it is refused), or None: serving.structured_check
StructuredProblem = Callable[["StructuredOutputsParams", "int | None"], Awaitable["tuple[str, str] | None"]]


def _no_structured_problem(
    structured_outputs: StructuredOutputsParams, max_tokens: int | None
) -> Awaitable[tuple[str, str] | None]:
    async def none() -> None:
        return None

    return none()


@functools.cache
def _refusal_type() -> type[VLLMValidationError]:
    from vllm.exceptions import VLLMValidationError

    class StructuredOutputRefused(VLLMValidationError):
        """vLLM's own request error (a 400 naming the parameter), marked as the worker's refusal."""

        tpworker_refusal = True

    return StructuredOutputRefused


def structured_refusal(field: str, message: str) -> Exception:
    """A structured-output specification the worker refuses, raised where vLLM's serving objects map it
    to a 400 naming `structured_outputs.<field>`; their stream generators do not log it (quiet_refusals)."""
    return _refusal_type()(message, parameter=f"structured_outputs.{field}")


class _QuietRefusals(logging.Filter):
    """vLLM's stream generators log every error with its traceback; the worker's refusals are not faults."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not getattr(error, "tpworker_refusal", False)


def quiet_refusals() -> None:
    """Keep the worker's refusals out of vLLM's serving modules' error logs (each has its own logger)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("vllm.entrypoints."):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _QuietRefusals) for f in logger.filters):
                logger.addFilter(_QuietRefusals())


# what EngineClient.generate takes as its prompt
GeneratePrompt: TypeAlias = "EngineCoreRequest | PromptType | EngineInput | AsyncGenerator[StreamingInput, None]"


class LimitedEngineClient:
    """The AsyncLLM as vLLM's OpenAI serving objects see it, with this worker's limits applied to
    each request once vLLM has tokenized it: the prompt length is exact (chat template, tools and
    all), and a max_tokens vLLM defaulted is capped at MAX_OUTPUT_TOKENS (an explicit one over it
    was refused before, by name); a structured-output specification passes the worker's check
    (`structured_problem`) before the engine gets it. Everything else is the AsyncLLM's own."""

    def __init__(
        self,
        llm: EngineClient,
        prompt_problem: Callable[[int], str | None],
        max_output_tokens: int | None,
        structured_problem: StructuredProblem = _no_structured_problem,
    ) -> None:
        self._llm = llm
        self._prompt_problem, self._max_output_tokens = prompt_problem, max_output_tokens
        self._structured_problem = structured_problem

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def _check_prompt(self, prompt: object) -> None:
        count = len(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else 0
        if problem := self._prompt_problem(count):
            raise ValueError(problem[0].upper() + problem[1:])  # vLLM's error mapping: a 400 with this message

    def generate(
        self, prompt: GeneratePrompt, sampling_params: SamplingParams, request_id: str, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[RequestOutput, None]:
        self._check_prompt(prompt)
        cap = self._max_output_tokens
        if cap is not None and (max_tokens := sampling_params.max_tokens) is not None:
            sampling_params.max_tokens = min(max_tokens, cap)
        if (structured := sampling_params.structured_outputs) is not None:
            return self._checked_generate(structured, prompt, sampling_params, request_id, *args, **kwargs)
        return self._llm.generate(prompt, sampling_params, request_id, *args, **kwargs)

    async def _checked_generate(
        self,
        structured: StructuredOutputsParams,
        prompt: GeneratePrompt,
        sampling_params: SamplingParams,
        request_id: str,
        *args: Any,
        **kwargs: Any,
    ) -> AsyncGenerator[RequestOutput, None]:
        """The engine's outputs once the specification `structured` has passed the check (vLLM's serving
        objects iterate this; a refusal is raised at the first step, before any output)."""
        if problem := await self._structured_problem(structured, sampling_params.max_tokens):
            raise structured_refusal(*problem)
        async with aclosing(self._llm.generate(prompt, sampling_params, request_id, *args, **kwargs)) as outputs:
            async for output in outputs:
                yield output

    def encode(
        self,
        prompt: PromptType | EngineInput,
        pooling_params: PoolingParams,
        request_id: str,
        *args: Any,
        **kwargs: Any,
    ) -> AsyncGenerator[PoolingRequestOutput, None]:
        self._check_prompt(prompt)
        return self._llm.encode(prompt, pooling_params, request_id, *args, **kwargs)


class OpenAIServer:
    """vLLM's own HTTP application (`vllm serve`'s routes, built by its build_app and
    init_app_state) on this worker's engine, called in process: the same routes, request
    validation, templates, tool and reasoning parsers, response objects and errors as vLLM's
    server, without a socket."""

    def __init__(
        self, app: FastAPI, llm: LimitedEngineClient, tasks: tuple[SupportedTask, ...], headers: dict[str, str]
    ) -> None:
        self._app, self._llm, self.tasks, self._headers = app, llm, tasks, headers

    @classmethod
    async def create(
        cls,
        llm: EngineClient,
        model: str,
        served_names: list[str],
        options: dict[str, Any],
        prompt_problem: Callable[[int], str | None] = lambda prompt_tokens: None,
        max_output_tokens: int | None = None,
        prepared: PreparedApp | None = None,
        structured_problem: StructuredProblem = _no_structured_problem,
    ) -> OpenAIServer:
        """Call inside the event loop that serves jobs (the engine binds to it). The worker's limits:
        `prompt_problem(prompt tokens)` says why a rendered prompt is refused (None: it is not), and
        a max_tokens vLLM defaults is capped at `max_output_tokens`. `prepared`: the application
        prepare() built, used when the engine serves the tasks it was built for."""
        from types import SimpleNamespace

        from vllm import envs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        limited = LimitedEngineClient(llm, prompt_problem, max_output_tokens, structured_problem)
        tasks = tuple(await limited.get_supported_tasks())
        app, args = application(prepared, tasks, limited.model_config, model, served_names, options)
        quiet_refusals()  # the serving modules are imported by now
        # the engine's final structured-output settings (REASONING_PARSER ends up there)
        args.structured_outputs_config = limited.vllm_config.structured_outputs_config
        # the limited client answers as the engine client it wraps (its __getattr__)
        await init_app_state(cast("EngineClient", limited), app.state, args, supported_tasks=tasks)
        # vLLM's engine-error handler asks the HTTP server to exit; here the worker decides that
        app.state.server = SimpleNamespace(should_exit=False)
        # RunPod authenticated the job; a VLLM_API_KEY set for vLLM's own server must not refuse it
        headers = {"authorization": f"Bearer {envs.VLLM_API_KEY}"} if envs.VLLM_API_KEY else {}
        return cls(app, limited, tasks, headers)

    @property
    def app(self) -> FastAPI:
        """vLLM's application itself, for serving it over HTTP (the load-balancing mode, tpworker.lb)."""
        return self._app

    async def call(self, route: str, body: dict[str, Any] | None, method: str = "POST") -> OpenAIReply:
        """Run one request on one of vLLM's routes. Every failure comes back as the route's error
        object with its status (an engine that died is raised, for the worker to report)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            response = await call_asgi(self._app, method, route, body, self._headers)
        except Exception as e:  # raised before any answer: vLLM's own mapping to an error object
            if is_engine_dead(e):
                raise
            error = self.error_from_exception(e)
            return OpenAIReply(error["error"]["code"], error)
        if response.content_type.startswith("text/event-stream"):
            return OpenAIReply(200, events=self._texts(response.body))
        raw = b"".join([part async for part in response.body])
        if response.status >= 500 and self._llm.errored:
            raise EngineDeadError()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": {"message": raw.decode(errors="replace"), "type": "InternalServerError"}}
        return OpenAIReply(response.status, answer)

    def model_names(self) -> tuple[list[str], dict[str, LoRARequest]]:
        """The base model's served names, and the LoRA adapters served (name -> vLLM's LoRARequest,
        with the ids vLLM's own routes use, so both job forms share one adapter slot in the engine)."""
        models = self._app.state.openai_serving_models
        return [path.name for path in models.base_model_paths], dict(models.lora_requests)

    @staticmethod
    async def _texts(parts: AsyncGenerator[bytes, None]) -> AsyncGenerator[str, None]:
        async with aclosing(parts):
            async for part in parts:
                yield part.decode()

    @staticmethod
    def error_from_exception(error: Exception) -> dict[str, Any]:
        """vLLM's own mapping of an exception to OpenAI's error object (status, type, param)."""
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        return create_error_response(error).model_dump()
