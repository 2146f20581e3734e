"""vLLM's own OpenAI serving objects on the worker's engine, called in process (no HTTP hop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tpworker.vllm_bridge.arguments import server_namespace
from tpworker.vllm_bridge.async_engine import is_engine_dead


def load_chat_template(template: str | None) -> str | None:
    """A chat template given as a file path or as the template itself (vLLM's rule)."""
    from vllm.renderers.chat_utils import load_chat_template as load

    return load(template)


@dataclass(frozen=True)
class OpenAIReply:
    """One OpenAI request's answer: a JSON body with its HTTP status, or (status 200) a stream of
    SSE event strings."""

    status: int
    body: dict | None = None
    events: AsyncIterator[str] | None = None


class LimitedEngineClient:
    """The AsyncLLM as vLLM's OpenAI serving objects see it, with this worker's limits applied to
    each request once vLLM has tokenized it: the prompt length is exact (chat template, tools and
    all), and a max_tokens vLLM defaulted is capped at MAX_OUTPUT_TOKENS (an explicit one over it
    was refused before, by name). Everything else is the AsyncLLM's own."""

    def __init__(self, llm, prompt_problem: Callable[[int], str | None], max_output_tokens: int | None):
        self._llm = llm
        self._prompt_problem, self._max_output_tokens = prompt_problem, max_output_tokens

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        count = len(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else 0
        if problem := self._prompt_problem(count):
            raise ValueError(problem[0].upper() + problem[1:])  # vLLM's error mapping: a 400 with this message
        cap = self._max_output_tokens
        if cap is not None and getattr(sampling_params, "max_tokens", None) is not None:
            sampling_params.max_tokens = min(sampling_params.max_tokens, cap)
        return self._llm.generate(prompt, sampling_params, request_id, *args, **kwargs)


class OpenAIServer:
    """vLLM's own OpenAI serving objects (`vllm serve`'s, built by its init_app_state) on this
    worker's engine: the same request validation, templates, tool and reasoning parsers, and
    response objects as vLLM's server, without an HTTP hop."""

    def __init__(self, state):
        self._state = state

    @classmethod
    async def create(
        cls,
        llm,
        model: str,
        served_names: list[str],
        options: dict[str, Any],
        prompt_problem: Callable[[int], str | None] = lambda prompt_tokens: None,
        max_output_tokens: int | None = None,
    ) -> OpenAIServer:
        """Call inside the event loop that serves jobs (the engine binds to it). The worker's limits:
        `prompt_problem(prompt tokens)` says why a rendered prompt is refused (None: it is not), and
        a max_tokens vLLM defaults is capped at `max_output_tokens`."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        llm = LimitedEngineClient(llm, prompt_problem, max_output_tokens)

        args = server_namespace(options)
        args.model, args.served_model_name = model, served_names
        # the engine's final structured-output settings (REASONING_PARSER ends up there)
        args.structured_outputs_config = llm.vllm_config.structured_outputs_config
        state = State()
        await init_app_state(llm, state, args, supported_tasks=await llm.get_supported_tasks())
        return cls(state)

    @staticmethod
    def _request_type(route: str):
        if route == "/v1/chat/completions":
            from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as request
        elif route == "/v1/completions":
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest as request
        else:
            from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as request
        return request

    async def call(self, route: str, body: dict) -> OpenAIReply:
        """Run one OpenAI request. Every failure comes back as OpenAI's error object with its status
        (an engine that died is raised, for the worker to report)."""
        from pydantic import ValidationError

        try:
            if route == "/v1/models":
                models = await self._state.openai_serving_models.show_available_models()
                return OpenAIReply(200, models.model_dump())
            request = self._request_type(route).model_validate(body)
            if route == "/v1/chat/completions":
                result = await self._state.openai_serving_chat.create_chat_completion(request, None)
            elif route == "/v1/completions":
                result = await self._state.openai_serving_completion.create_completion(request, None)
            else:
                result = await self._state.openai_serving_responses.create_responses(request, None)
        except ValidationError as e:
            return OpenAIReply(400, self.validation_error(e))
        except Exception as e:  # vLLM raises some request errors instead of returning them
            if is_engine_dead(e):
                raise
            error = self.error_from_exception(e)
            return OpenAIReply(error["error"]["code"], error)
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(result, ErrorResponse):
            return OpenAIReply(result.error.code, result.model_dump())
        if hasattr(result, "model_dump"):
            return OpenAIReply(200, result.model_dump(mode="json", by_alias=True))
        if route == "/v1/responses":
            from vllm.entrypoints.openai.responses.api_router import _convert_stream_to_sse_events

            result = _convert_stream_to_sse_events(result)
        return OpenAIReply(200, events=result)

    @staticmethod
    def error_from_exception(error: Exception) -> dict:
        """vLLM's own mapping of an exception to OpenAI's error object (status, type, param)."""
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        return create_error_response(error).model_dump()

    @staticmethod
    def validation_error(error) -> dict:
        """A request that does not parse, reported as vLLM's server reports it (400, the field)."""
        from vllm.entrypoints.serve.exception_handling.handlers.validation import clean_loc_for_param
        from vllm.entrypoints.serve.exception_handling.utils import sanitize_message

        first = error.errors()[0]
        param = clean_loc_for_param(tuple(first["loc"])) if first.get("loc") else None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return {"error": {"message": sanitize_message(message), "type": "BadRequestError", "param": param, "code": 400}}
