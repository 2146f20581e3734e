"""Job input -> a validated request, or a JobError that names the field and what it accepts.

Native form (RunPod worker-vllm's): {"prompt": str} or {"messages": [...]}, with optional
"sampling_params" (vLLM SamplingParams fields), "stream", "apply_chat_template" and the
stream-batching overrides "max_batch_size", "min_batch_size", "batch_size_growth_factor".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# SamplingParams fields a job may not set: the worker sets them, or they are engine internals.
INTERNAL_SAMPLING_FIELDS = frozenset(
    {
        "output_kind",
        "skip_clone",
        "output_text_buffer_length",
        "routed_experts_prompt_start",
        "trace_decode_token_ids",
    }
)
ROLES = ("system", "user", "assistant", "tool", "developer")


class JobError(Exception):
    """A job that cannot run. Becomes the job's one error output; the worker keeps serving."""

    def __init__(self, message: str, param: str | None = None, type: str = "BadRequestError", code: int = 400):
        super().__init__(message)
        self.message, self.param, self.type, self.code = message, param, type, code

    def to_output(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    """An OpenAI-style chat message; content parts and tool fields are passed on to vLLM."""

    model_config = ConfigDict(extra="allow")
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[dict[str, Any]] | None = None


class NativeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[Message] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    apply_chat_template: bool = False
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages):
        if messages is not None and not messages:
            raise ValueError("must hold at least one message")
        return messages


@dataclass(frozen=True)
class BatchPolicy:
    """How many tokens each streamed chunk carries: min_size first, growing by growth_factor per
    chunk up to max_size."""

    max_size: int
    min_size: int
    growth_factor: float


@dataclass(frozen=True)
class NativeRequest:
    prompt: str | None  # a plain prompt, tokenized as is
    messages: list[dict] | None  # or chat messages, rendered with the chat template
    sampling_params: Any  # vllm.SamplingParams; max_tokens None = the worker's default
    stream: bool
    batching: BatchPolicy


def _field_path(loc: tuple) -> str:
    """pydantic's error location -> 'messages[0].role'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _first_error(e: ValidationError, prefix: str = "") -> JobError:
    err = e.errors()[0]
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(NativeInput.model_fields)
        return JobError(f"Unknown field '{_field_path(loc)}'. Accepted fields: {accepted}.", param=_field_path(loc))
    if err["type"] == "literal_error" and loc and loc[-1] == "role":
        return JobError(
            f"{_field_path(loc)}: unknown role {err['input']!r}. Accepted roles: {', '.join(ROLES)}.",
            param=_field_path(loc),
        )
    path = prefix + _field_path(loc)
    return JobError(f"{path}: {err['msg']}.", param=path)


def _sampling_params(raw: dict[str, Any], max_n: int):
    """vLLM SamplingParams from a job's dict: unknown names refused, types and ranges checked by
    vLLM's own validation, `n` limited by MAX_N."""
    from vllm import SamplingParams
    from pydantic import TypeAdapter

    allowed = sorted(
        f for f in SamplingParams.__struct_fields__ if not f.startswith("_") and f not in INTERNAL_SAMPLING_FIELDS
    )
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise JobError(
            f"Unknown sampling parameter '{unknown[0]}'. Accepted: {', '.join(allowed)}.",
            param=f"sampling_params.{unknown[0]}",
        )
    try:
        params = TypeAdapter(SamplingParams).validate_python(raw)
    except ValidationError as e:
        # vLLM's adapter reports a second, generic "not a SamplingParams" error; keep the field's.
        errors = [err for err in e.errors() if len(err["loc"]) > 1] or e.errors()
        loc = errors[0]["loc"][1:]  # drop the adapter's own location element
        path = "sampling_params." + _field_path(tuple(p for p in loc if not str(p).startswith(("list[", "str"))))
        raise JobError(f"{path}: {errors[0]['msg']}.", param=path) from None
    except ValueError as e:  # vLLM's range checks (VLLMValidationError is a ValueError)
        name = getattr(e, "parameter", None)
        param = f"sampling_params.{name}" if name else "sampling_params"
        raise JobError(f"{param}: {str(e).split(' (parameter=')[0]}", param=param) from None
    if params.n > max_n:
        raise JobError(f"sampling_params.n: {params.n} is above this worker's limit of {max_n} (MAX_N).", param="sampling_params.n")
    if "max_tokens" not in raw:
        params.max_tokens = None  # the worker fills in its default once the prompt length is known
    return params


def parse_native(job_input: Any, *, default_batching: BatchPolicy, max_n: int) -> NativeRequest:
    if not isinstance(job_input, dict):
        raise JobError(
            f"input must be a JSON object with 'prompt' or 'messages', not {type(job_input).__name__}.",
            param="input",
        )
    try:
        native = NativeInput.model_validate(job_input)
    except ValidationError as e:
        raise _first_error(e) from None
    if (native.prompt is None) == (native.messages is None):
        raise JobError(
            "Give exactly one of 'prompt' (a string) or 'messages' (a list of chat messages).",
            param="prompt" if native.prompt is None else "messages",
        )
    sampling = _sampling_params(native.sampling_params, max_n)
    messages = [m.model_dump(exclude_none=True) for m in native.messages] if native.messages else None
    prompt = native.prompt
    if native.apply_chat_template and prompt is not None:
        messages, prompt = [{"role": "user", "content": prompt}], None
    batching = BatchPolicy(
        max_size=native.max_batch_size or default_batching.max_size,
        min_size=native.min_batch_size or default_batching.min_size,
        growth_factor=native.batch_size_growth_factor or default_batching.growth_factor,
    )
    if batching.min_size > batching.max_size:
        batching = BatchPolicy(batching.max_size, batching.max_size, batching.growth_factor)
    return NativeRequest(prompt, messages, sampling, native.stream, batching)


def parse_job(job: Any, *, default_batching: BatchPolicy, max_n: int) -> NativeRequest:
    """A RunPod job ({"id": ..., "input": {...}}) -> the request it asks for."""
    if not isinstance(job, dict) or "input" not in job:
        raise JobError("The job has no 'input'.", param="input")
    return parse_native(job["input"], default_batching=default_batching, max_n=max_n)
