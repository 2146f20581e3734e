"""Job input -> a validated request, or a JobError that names the field and what it accepts.

Native form (RunPod worker-vllm's): {"prompt": str} or {"messages": [...]}, with optional
"sampling_params" (vLLM SamplingParams fields), "stream", "apply_chat_template" and the
stream-batching overrides "max_batch_size", "min_batch_size", "batch_size_growth_factor".
OpenAI form (what RunPod's /openai/v1 gateway sends): {"openai_route": "/v1/chat/completions",
"openai_input": {...the OpenAI request body...}}; the body itself is checked by vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tpworker.serving.batching import BatchPolicy
from tpworker.serving.errors import JobError
from tpworker.serving.limits import Limits

ROLES = ("system", "user", "assistant", "tool", "developer")
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models")


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


MAX_NESTING = 64
INT64 = 2**63


def check_json_values(value: Any, path: str = "input", depth: int = 0) -> None:
    """Refuse what JSON parsers let through but no field here can use: NaN and infinities (vLLM's
    range checks pass NaN), integers beyond 64 bits (they cannot reach the engine), lone UTF-16
    surrogates (they cannot be encoded for the tokenizer), and absurd nesting."""
    if depth > MAX_NESTING:
        raise JobError(f"{path}: nested more than {MAX_NESTING} levels deep.", param=path)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise JobError(f"{path}: {value} is not a finite number.", param=path)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -INT64 <= value < INT64:
            raise JobError(f"{path}: {value} is out of range (a 64-bit integer is accepted).", param=path)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JobError(f"{path}: the text holds invalid Unicode (a lone surrogate).", param=path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_values(key, path, depth + 1)
            check_json_values(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_values(item, f"{path}[{index}]", depth + 1)


@dataclass(frozen=True)
class NativeRequest:
    prompt: str | None  # a plain prompt, tokenized as is
    messages: list[dict] | None  # or chat messages, rendered with the chat template
    sampling_params: Any  # vllm.SamplingParams; max_tokens None = the worker's default
    stream: bool
    batching: BatchPolicy


TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_type_step(part) -> bool:
    """Steps pydantic adds to a location for the members of a union ('str', 'list[int]', ...)."""
    return isinstance(part, str) and (part in TYPE_NAMES or "[" in part or "(" in part)


def _field_path(loc: tuple) -> str:
    """pydantic's error location -> 'messages[0].role' (union member names left out)."""
    path = ""
    for part in (p for p in loc if not _is_type_step(p)):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _first_error(e: ValidationError, prefix: str = "", errors: list | None = None) -> JobError:
    """The first field pydantic refused, with every alternative it would have taken."""
    errors = errors or e.errors()
    err = errors[0]
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
    reasons = [x["msg"] for x in errors if _field_path(x["loc"]) == _field_path(loc)]
    return JobError(f"{path}: {'; or '.join(dict.fromkeys(reasons))}.", param=path)


def _sampling_params(raw: dict[str, Any], limits: Limits):
    """vLLM SamplingParams from a job's dict: unknown names refused, types and ranges checked by
    vLLM's own validation, `n` limited by MAX_N."""
    from tpworker.vllm_bridge import sampling

    allowed = sampling.sampling_param_names()
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise JobError(
            f"Unknown sampling parameter '{unknown[0]}'. Accepted: {', '.join(allowed)}.",
            param=f"sampling_params.{unknown[0]}",
        )
    try:
        params = sampling.sampling_params(raw)
    except ValidationError as e:
        # vLLM's adapter adds a generic "not a SamplingParams" error and a first location step
        # of its own; keep the field's errors, located from the field.
        errors = [{**err, "loc": err["loc"][1:]} for err in e.errors() if len(err["loc"]) > 1] or e.errors()
        raise _first_error(e, prefix="sampling_params.", errors=errors) from None
    except sampling.InvalidParameter as e:  # vLLM's range checks
        param = f"sampling_params.{e.parameter}" if e.parameter else "sampling_params"
        raise JobError(f"{param}: {e}", param=param) from None
    limits.check_n(params.n, "sampling_params.n")
    if raw.get("max_tokens") is not None:
        limits.check_output_tokens(params.max_tokens, "sampling_params.max_tokens")
    if "max_tokens" not in raw:
        params.max_tokens = None  # the worker fills in its default once the prompt length is known
    return params


def parse_native(job_input: Any, *, default_batching: BatchPolicy, limits: Limits) -> NativeRequest:
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
    sampling = _sampling_params(native.sampling_params, limits)
    messages = [m.model_dump(exclude_none=True) for m in native.messages] if native.messages else None
    prompt = native.prompt
    if native.apply_chat_template and prompt is not None:
        messages, prompt = [{"role": "user", "content": prompt}], None
    batching = default_batching.for_job(native.max_batch_size, native.min_batch_size, native.batch_size_growth_factor)
    return NativeRequest(prompt, messages, sampling, native.stream, batching)


@dataclass(frozen=True)
class OpenAIRequest:
    route: str  # one of OPENAI_ROUTES
    body: dict

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True


# OpenAI body fields bounded by the worker's limits (the rest vLLM checks itself).
OPENAI_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _check_openai_body(route: str, body: dict, limits: Limits) -> None:
    """What this worker refuses beyond vLLM's own checks: its limits, and (as OpenAI's API does)
    chat roles it does not know, which vLLM would pass to the template as they are."""
    messages = body.get("messages") if route == "/v1/chat/completions" else None
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in ROLES:
            raise JobError(
                f"messages[{index}].role: unknown role {role!r}. Accepted roles: {', '.join(ROLES)}.",
                param=f"messages[{index}].role",
            )
    limits.check_n(body.get("n"), "n")
    for name in OPENAI_OUTPUT_FIELDS:
        limits.check_output_tokens(body.get(name), name)


def parse_openai(job_input: dict, limits: Limits) -> OpenAIRequest:
    route, body = job_input.get("openai_route"), job_input.get("openai_input")
    if not isinstance(route, str) or route.rstrip("/") not in OPENAI_ROUTES:
        raise JobError(
            f"Unknown openai_route {route!r}. Accepted: {', '.join(OPENAI_ROUTES)}.",
            param="openai_route",
            type="NotFoundError",
            code=404,
        )
    route = route.rstrip("/")
    if body is None and route == "/v1/models":
        body = {}
    if not isinstance(body, dict):
        raise JobError("openai_input must be a JSON object: the OpenAI request body.", param="openai_input")
    unknown = set(job_input) - {"openai_route", "openai_input"}
    if unknown:
        raise JobError(
            f"Unknown field '{sorted(unknown)[0]}' beside openai_route and openai_input.", param=sorted(unknown)[0]
        )
    _check_openai_body(route, body, limits)
    return OpenAIRequest(route, body)


def parse_job(job: Any, *, default_batching: BatchPolicy, limits: Limits) -> NativeRequest | OpenAIRequest:
    """A RunPod job ({"id": ..., "input": {...}}) -> the request it asks for."""
    if not isinstance(job, dict) or "input" not in job:
        raise JobError("The job has no 'input'.", param="input")
    job_input = job["input"]
    limits.check_request_bytes(job_input)
    check_json_values(job_input)
    if isinstance(job_input, dict) and ("openai_route" in job_input or "openai_input" in job_input):
        return parse_openai(job_input, limits)
    return parse_native(job_input, default_batching=default_batching, limits=limits)
