"""OpenAI-form jobs on the worker's engine, through vLLM's own OpenAI serving layer.

Non-streaming: one yield, the response object. Streaming: yields of whole SSE events
(`data: {...}\\n\\n`), grouped into chunks like native streams (serving/batching.py),
the last one ending with `data: [DONE]\\n\\n` (chat and completions; the Responses API streams
typed events without it, as vLLM's server does). Errors: OpenAI's error object, with its status
in `code`, as the job's one output.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

from tpworker.serving.batching import BatchPolicy, chunks
from tpworker.serving.engine import Engine
from tpworker.serving.job_errors import JobError
from tpworker.serving.job_input import GENERATION_ROUTES, JobOutput, OpenAIRequest
from tpworker.serving.limits import Limits
from tpworker.serving.structured_check import StructuredOutputCheck
from tpworker.vllm_bridge import sampling
from tpworker.vllm_bridge.openai_server import OpenAIServer, PreparedApp
from tpworker.vllm_bridge.serve_flags import flags_to_variables

if TYPE_CHECKING:
    from tpworker.vllm_bridge.types import LoRARequest, StructuredOutputsParams

# The models vLLM registers each route for (its build_app), in words, for the 404 of a route a model lacks.
_GENERATIVE = "a generative model (RUNNER=generate, the default for a *ForCausalLM checkpoint)"
_SCORING = "an embedding model, or a classifier with one label (a cross-encoder)"
_SERVED_FOR = {
    **dict.fromkeys(GENERATION_ROUTES, _GENERATIVE),
    "/v1/embeddings": "an embedding model (RUNNER=pooling with CONVERT=embed, or an embedding checkpoint)",
    "/pooling": "a pooling model (RUNNER=pooling)",
    "/classify": "a classifier (a *ForSequenceClassification checkpoint, or RUNNER=pooling with CONVERT=classify)",
    **dict.fromkeys(("/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank"), _SCORING),
}


def _structured_field(param: str, body: dict[str, Any]) -> str:
    """The body field that carried a structured-output specification vLLM made: the request names it as
    structured_outputs, response_format, a forced tool (its parameters' schema) or the Responses API's text."""
    if "structured_outputs" in body:
        return param
    if "response_format" in body:
        return "response_format"
    if body.get("tools") and body.get("tool_choice") not in (None, "auto", "none"):
        return "tool_choice"
    if isinstance(body.get("text"), dict) and "format" in body["text"]:
        return "text.format"
    return param


def _located(message: str, param: str | None, body: dict[str, Any]) -> tuple[str, str | None]:
    """vLLM's error message in this worker's terms: its command-line flags as our variables
    (--trust-request-chat-template -> TRUST_REQUEST_CHAT_TEMPLATE), and a grammar that does not
    compile, or a specification the worker refused, attributed to the field that carried it."""
    message = flags_to_variables(message)
    if param and param.startswith("body."):  # vLLM's server locates a field from the HTTP body; a job has no body
        param = param[len("body.") :]
    if param and param.startswith("structured_outputs."):
        param = _structured_field(param, body)
        if not message.startswith(param):
            message = f"{param}: {message}"
    if param is None and sampling.is_grammar_error(message):
        param = next((f for f in ("response_format", "structured_outputs", "guided_json") if f in body), None)
        if param:
            message = f"{param}: {message}"
    return message, param


def _stream_error(text: str) -> dict[str, Any] | None:
    """The error object of a stream's first event, when the stream begins with one (OpenAI's
    `data: {"error": {...}}`, Anthropic's `event: error`)."""
    for line in text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            try:
                event = json.loads(line[len("data: ") :])
            except ValueError:
                return None
            error = event.get("error") if isinstance(event, dict) else None
            return error if isinstance(error, dict) else None
    return None


async def _after(first: str | None, rest: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    if first is not None:
        yield first
    async for text in rest:
        yield text


def _served(base: list[str], adapters: dict[str, Any]) -> str:
    served = f"Served: {', '.join(base)} (the model)"
    if adapters:
        served += f" and the LoRA adapters {', '.join(adapters)}"
    return served + "."


class OpenAIRoutes:
    def __init__(
        self,
        engine: Engine,
        model: str,
        served_names: list[str],
        options: dict[str, Any],
        batching: BatchPolicy,
        limits: Limits,
        raw_output: bool = True,
        structured: StructuredOutputCheck | None = None,
    ) -> None:
        self.engine = engine
        self.structured = structured
        self.limits = limits
        self.model, self.served_names, self.options = model, served_names, options
        self.batching = batching
        self.raw_output = raw_output
        self._server: OpenAIServer | None = None
        self._creating = asyncio.Lock()

    async def server(self) -> OpenAIServer:
        """Built on first use, inside the event loop that serves jobs (vLLM binds to it)."""
        async with self._creating:
            if self._server is None:
                prepared: PreparedApp | None = None  # what the build needs, prepared beside the engine's start
                if self.engine.prepared is not None:
                    prepared = await asyncio.wrap_future(self.engine.prepared)
                self._server = await OpenAIServer.create(
                    self.engine.llm,
                    self.model,
                    self.served_names,
                    self.options,
                    self.limits.prompt_problem,
                    self.limits.max_output_tokens,
                    prepared,
                    self._structured_problem,
                )
        return self._server

    async def _structured_problem(
        self, structured_outputs: StructuredOutputsParams, max_tokens: int | None
    ) -> tuple[str, str] | None:
        """(constraint field, why) when a request's structured-output specification must not reach the engine."""
        if self.structured is None:
            return None
        refusal = await self.structured.problem(structured_outputs, max_tokens)
        return (refusal.field, refusal.message) if refusal else None

    async def adapter(self, name: str | None) -> LoRARequest | None:
        """The LoRA adapter a native job names: None for the base model (no name, or a served name),
        vLLM's LoRARequest for an adapter; an unknown name is a 404 naming what is served."""
        base, adapters = (await self.server()).model_names()
        if name is None or name in base:
            return None
        if name in adapters:
            return adapters[name]
        raise JobError(
            f"model: {name!r} is not served here. {_served(base, adapters)}",
            param="model",
            type="NotFoundError",
            code=404,
        )

    def close(self) -> None:
        self._server = None

    async def run(self, request: OpenAIRequest) -> AsyncGenerator[JobOutput, None]:
        server = await self.server()
        reply = await server.call(request.route, request.body, request.method)
        if reply.events is None:
            body = cast("dict[str, Any]", reply.body)  # a reply without events has a body (OpenAIServer.call)
            if reply.status >= 400:
                raise self._error(request, reply.status, body, server)
            yield body
            return
        async with aclosing(reply.events) as events:
            first = await anext(events, None)
            if first is not None and (error := _stream_error(first)) is not None:
                # refused before any output (the worker's structured-output check): the job's one error
                status = code if isinstance(code := error.get("code"), int) else 400
                raise self._error(request, status, {"error": error}, server)
            async for batch in self._batched(_after(first, events)):
                yield batch

    @staticmethod
    def _error(request: OpenAIRequest, status: int, body: dict[str, Any], server: OpenAIServer) -> JobError:
        """The route's error object (OpenAI's, Anthropic's, or FastAPI's {"detail"}) as the job's error."""
        error = found if isinstance(found := body.get("error"), dict) else {}
        if status == 404 and body.get("detail") == "Not Found":  # vLLM registers no such route for this model
            return JobError(
                f"{request.route} is not served for this model: vLLM serves it for "
                f"{_SERVED_FOR.get(request.route, 'another kind of model')}, and this one runs for "
                f"{', '.join(server.tasks)} (RUNNER and CONVERT choose how vLLM runs the model).",
                type="NotFoundError",
                code=404,
            )
        message = error.get("message") or str(body.get("detail") or body)
        message, param = _located(message, error.get("param"), request.body or {})
        if status == 404 and param == "model" and server.model_names()[1]:
            message = f"{message.rstrip('.')}. {_served(*server.model_names())}"  # vLLM names the base model only
        code = found_code if isinstance(found_code := error.get("code"), int) else status
        return JobError(message, param=param, type=error.get("type", "BadRequestError"), code=code)

    async def _batched(self, events: AsyncIterator[str]) -> AsyncGenerator[str | list[Any], None]:
        """Whole SSE events, grouped into chunks by the batching policy (paced by time, or counted in events)."""
        async with aclosing(chunks(events, self.batching, lambda text: text.count("\n\n"))) as groups:
            async for group in groups:
                yield self._shape(group)

    def _shape(self, texts: list[str]) -> str | list[Any]:
        if self.raw_output:
            return "".join(texts)
        # RAW_OPENAI_OUTPUT=false (worker-vllm's option): the chunk objects, without [DONE]
        return [
            json.loads(line[len("data: ") :])
            for text in texts
            for line in text.split("\n")
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
