"""Native jobs: prompt or messages -> engine -> chunks in worker-vllm's output format.

Each chunk: {"choices": [{"tokens": [str, ...], "finish_reason": str | None}, ...],
             "usage": {"input": prompt tokens, "output": tokens generated so far, all choices}}
Streaming: chunks paced by time or by count (serving/batching.py). A choice's finish_reason is set from the chunk
holding its last token on. Not streaming: one chunk, the whole text of each choice.
When the job asks for `sampling_params.logprobs` (k), each choice also carries "logprobs": one
entry per generated token, {"token", "token_id", "logprob", "top_logprobs": [k best, by rank]}.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from vllm.sampling_params import RequestOutputKind

from tpworker.errors import in_one_line
from tpworker.serving.batching import chunks
from tpworker.serving.engine import Engine
from tpworker.serving.job_errors import JobError
from tpworker.serving.job_input import NativeRequest
from tpworker.serving.limits import Limits
from tpworker.serving.structured_check import StructuredOutputCheck
from tpworker.vllm_bridge import prompts, sampling

if TYPE_CHECKING:
    from tpworker.vllm_bridge.types import EngineInput, Logprob, LoRARequest, RequestOutput, SampleLogprobs


@dataclass(frozen=True)
class ChatOptions:
    """How messages become a prompt: the chat template (None: the model's own) and default
    keyword arguments for it."""

    template: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)


class StreamBatcher:
    """Collects the text pieces (and logprobs) of each choice until the next chunk is taken."""

    def __init__(self, n: int, with_logprobs: bool = False) -> None:
        self.tokens: list[list[str]] = [[] for _ in range(n)]
        self.logprobs: list[list[dict[str, Any]]] | None = [[] for _ in range(n)] if with_logprobs else None
        self.finish_reasons: list[str | None] = [None] * n

    def add(self, index: int, text: str, finish_reason: str | None, logprobs: Iterable[dict[str, Any]] = ()) -> None:
        if text:  # an end-of-sequence token counts, but has no text to show
            self.tokens[index].append(text)
        if self.logprobs is not None:
            self.logprobs[index].extend(logprobs)
        if finish_reason is not None:
            self.finish_reasons[index] = finish_reason

    def take(self, usage: dict[str, int]) -> dict[str, Any]:
        choices: list[dict[str, Any]] = [
            {"tokens": tokens, "finish_reason": reason}
            for tokens, reason in zip(self.tokens, self.finish_reasons, strict=True)
        ]
        if self.logprobs is not None:
            for choice, logprobs in zip(choices, self.logprobs, strict=True):
                choice["logprobs"] = logprobs
            self.logprobs = [[] for _ in self.logprobs]
        chunk = {"choices": choices, "usage": usage}
        self.tokens = [[] for _ in self.tokens]
        return chunk


def _rank(logprob: Logprob) -> int:
    return logprob.rank if logprob.rank is not None else sys.maxsize  # unranked: last


def token_logprobs(token_ids: Sequence[int], logprobs: SampleLogprobs | None, k: int) -> list[dict[str, Any]]:
    """vLLM's per-position {token_id: Logprob} -> one plain entry per generated token."""
    entries = []
    for token_id, candidates in zip(token_ids, logprobs or [], strict=False):  # no logprobs asked: none
        position = candidates or {}  # vLLM's type allows an empty position; it fills each one asked for
        chosen = position[token_id]
        best = sorted(
            (c for c in position.items() if k < 0 or _rank(c[1]) <= k), key=lambda candidate: _rank(candidate[1])
        )
        entries.append(
            {
                "token": chosen.decoded_token,
                "token_id": token_id,
                "logprob": chosen.logprob,
                "top_logprobs": [
                    {"token": lp.decoded_token, "token_id": tid, "logprob": lp.logprob} for tid, lp in best
                ],
            }
        )
    return entries


async def _engine_input(engine: Engine, request: NativeRequest, chat: ChatOptions) -> EngineInput:
    field = "messages" if request.messages is not None else "prompt"
    try:
        if request.messages is not None:
            return await engine.render_chat(request.messages, chat.template, chat.template_kwargs)
        return await engine.render_text(cast(str, request.prompt))  # the job has a prompt when no messages
    except Exception as e:  # the template or the tokenizer refused the input
        if sampling.as_invalid_parameter(e) or isinstance(e, (ValueError, TypeError, KeyError)):
            raise JobError(f"{field}: {in_one_line(e)}", param=field) from None
        raise


def _fit_max_tokens(request: NativeRequest, prompt_tokens: int, context: int, default: int) -> None:
    """Refuse a max_tokens that cannot fit after the prompt; give a default one that does."""
    room = context - prompt_tokens
    field = "messages" if request.messages is not None else "prompt"
    if room < 1:
        raise JobError(
            f"{field}: the prompt is {prompt_tokens} tokens, which leaves no room in the model's "
            f"context of {context} tokens. Shorten it.",
            param=field,
        )
    params = request.sampling_params
    if params.max_tokens is None:
        params.max_tokens = min(default, room)
    elif params.max_tokens > room:
        raise JobError(
            f"sampling_params.max_tokens: {params.max_tokens} tokens after the prompt's {prompt_tokens} "
            f"exceed the model's context of {context} tokens. Ask for at most {room}.",
            param="sampling_params.max_tokens",
        )


def _tokens_in(output: RequestOutput) -> int:
    return sum(len(choice.token_ids) for choice in output.outputs)


async def generate(
    engine: Engine,
    request: NativeRequest,
    *,
    chat: ChatOptions,
    default_max_tokens: int,
    job_id: str,
    limits: Limits,
    lora: LoRARequest | None = None,
    structured: StructuredOutputCheck | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """`lora`: the vLLM LoRARequest of the adapter the job names (None: the base model). `structured`: the
    check a structured-output specification passes before the engine gets it."""
    engine_input = await _engine_input(engine, request, chat)
    prompt_tokens = len(prompts.prompt_token_ids(engine_input))
    limits.check_prompt_tokens(prompt_tokens, "messages" if request.messages is not None else "prompt")
    default_max_tokens = limits.default_output_tokens(default_max_tokens)
    _fit_max_tokens(request, prompt_tokens, engine.max_model_len, default_max_tokens)
    params = request.sampling_params
    if structured is not None and params.structured_outputs is not None:
        if refusal := await structured.problem(params.structured_outputs, params.max_tokens):
            field = f"sampling_params.structured_outputs.{refusal.field}"
            raise JobError(f"{field}: {refusal.message}", param=field)
    params.output_kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
    batcher = StreamBatcher(params.n, with_logprobs=params.logprobs is not None)
    generated = 0
    request_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    try:
        # aclosing: when the job is cancelled or closed mid-stream, the engine request is aborted
        # right away, not when the generator happens to be garbage-collected.
        outputs = engine.generate(engine_input, params, request_id, lora)
        async with aclosing(chunks(outputs, request.batching, _tokens_in)) as groups:
            async for group in groups:
                for output in group:
                    for choice in output.outputs:
                        generated += len(choice.token_ids)
                        logprobs = (
                            token_logprobs(choice.token_ids, choice.logprobs, params.logprobs)
                            if params.logprobs is not None
                            else ()
                        )
                        batcher.add(choice.index, choice.text, choice.finish_reason, logprobs)
                if request.stream and not group[-1].finished:
                    yield batcher.take({"input": prompt_tokens, "output": generated})
    except Exception as e:
        if invalid := sampling.as_invalid_parameter(e):  # e.g. logprobs above MAX_LOGPROBS
            param = f"sampling_params.{invalid.parameter}" if invalid.parameter else None
            if param is None and params.structured_outputs is not None and sampling.is_grammar_error(str(invalid)):
                param = "sampling_params.structured_outputs"  # a schema or grammar that does not compile
            message = in_one_line(invalid)
            raise JobError(f"{param}: {message}" if param else message, param=param) from None
        raise
    if not request.stream:
        batcher.tokens = [["".join(pieces)] for pieces in batcher.tokens]
    yield batcher.take({"input": prompt_tokens, "output": generated})
