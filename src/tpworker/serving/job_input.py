"""Job input -> a validated request, or a JobError that names the field and what it accepts.

Native form (RunPod worker-vllm's): {"prompt": str} or {"messages": [...]}, with optional
"sampling_params" (vLLM SamplingParams fields), "stream", "apply_chat_template", "model" (a LoRA
adapter's name) and the
stream-batching overrides "max_batch_size", "min_batch_size", "batch_size_growth_factor".
OpenAI form (what RunPod's /openai/v1 gateway sends): {"openai_route": "/v1/chat/completions",
"openai_input": {...the OpenAI request body...}}. Route form (worker-vllm's current release):
{"route": "/tokenize", "body": {...}, "method": "POST"}. Both reach any route in ROUTES; the body
itself is checked by vLLM.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from tpworker.serving.batching import BatchPolicy
from tpworker.serving.job_errors import JobError
from tpworker.serving.limits import Limits

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam
    from pydantic_core import ErrorDetails
    from vllm import SamplingParams

# One output of a job, as RunPod posts it: an object, or a stream's chunk of SSE text or of event objects.
JobOutput: TypeAlias = dict[str, Any] | str | list[Any]

ROLES = ("system", "user", "assistant", "tool", "developer")
# The vLLM server routes a job may call, with the HTTP method each takes. Pooling routes answer
# only when the model runs as a pooling model, generation routes only when it generates.
ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/responses": "POST",
    "/v1/models": "GET",
    "/v1/messages": "POST",  # Anthropic's Messages API
    "/v1/messages/count_tokens": "POST",
    "/tokenize": "POST",
    "/detokenize": "POST",
    "/v1/embeddings": "POST",
    "/pooling": "POST",
    "/classify": "POST",
    "/score": "POST",
    "/v1/score": "POST",
    "/rerank": "POST",
    "/v1/rerank": "POST",
    "/v2/rerank": "POST",
}
GENERATION_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"}
)


class Message(BaseModel):
    """An OpenAI-style chat message; content parts and tool fields are passed on to vLLM."""

    model_config = ConfigDict(extra="allow")
    role: Literal[ROLES]  # type: ignore[valid-type]  # a tuple of roles: Literal takes its members
    content: str | list[dict[str, Any]] | None = None


class NativeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[Message] | None = None
    model: str | None = None  # the served model's name, or a LoRA adapter's (LORA_MODULES)
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    apply_chat_template: bool = False
    max_batch_size: int | None = Field(None, ge=1)
    min_batch_size: int | None = Field(None, ge=1)
    batch_size_growth_factor: float | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, messages: list[Message] | None) -> list[Message] | None:
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
    messages: list[dict[str, Any]] | None  # or chat messages, rendered with the chat template
    sampling_params: SamplingParams  # max_tokens None = the worker's default
    stream: bool
    batching: BatchPolicy
    model: str | None = None  # None or the served name: the base model; else a LoRA adapter's name


TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_type_step(part: object) -> bool:
    """Steps pydantic adds to a location for the members of a union ('str', 'list[int]', ...)."""
    return isinstance(part, str) and (part in TYPE_NAMES or "[" in part or "(" in part)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location -> 'messages[0].role' (union member names left out)."""
    path = ""
    for part in (p for p in loc if not _is_type_step(p)):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _first_error(e: ValidationError, prefix: str = "", errors: list[ErrorDetails] | None = None) -> JobError:
    """The first field pydantic refused, with every alternative it would have taken."""
    errors = errors or e.errors()
    err = errors[0]
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(NativeInput.model_fields)
        return JobError(f"Unknown field '{_field_path(loc)}'. Accepted fields: {accepted}.", param=_field_path(loc))
    if err["type"] == "literal_error" and loc and loc[-1] == "role":
        return unknown_role(_field_path(loc), err["input"])
    path = prefix + _field_path(loc)
    reasons = [x["msg"] for x in errors if _field_path(x["loc"]) == _field_path(loc)]
    return JobError(f"{path}: {'; or '.join(dict.fromkeys(reasons))}.", param=path)


def _sampling_params(raw: dict[str, Any], limits: Limits) -> SamplingParams:
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
        params: SamplingParams = sampling.sampling_params(raw)
    except ValidationError as e:
        # vLLM's adapter adds a generic "not a SamplingParams" error and a first location step
        # of its own; keep the field's errors, located from the field.
        errors: list[ErrorDetails] = [{**err, "loc": err["loc"][1:]} for err in e.errors() if len(err["loc"]) > 1]
        errors = errors or e.errors()
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


@functools.cache
def _openai_messages() -> TypeAdapter[ChatCompletionMessageParam]:
    """OpenAI's own message types (the openai package's), told apart by role: what each role requires."""
    from typing import Annotated

    from openai.types.chat import ChatCompletionMessageParam

    return TypeAdapter(Annotated[ChatCompletionMessageParam, Field(discriminator="role")])


def _check_messages_as_openai_does(messages: list[dict[str, Any]]) -> None:
    """The fields each role requires, as OpenAI's API requires them (a tool message its tool_call_id,
    a user message its content, ...), by OpenAI's own types."""
    for index, message in enumerate(messages):
        try:
            _openai_messages().validate_python(message)
        except ValidationError as e:
            first = e.errors()[0]
            field = _field_path(first["loc"][1:])
            path = f"messages[{index}].{field}" if field else f"messages[{index}]"
            role = message.get("role")
            raise JobError(f"{path}: {first['msg']} (in a {role} message).", param=path) from None


def parse_native(
    job_input: Any, *, default_batching: BatchPolicy, limits: Limits, output: str = "tokens"
) -> NativeRequest | OpenAIRequest:
    """A native job, checked field by field; with output="openai" (NATIVE_OUTPUT_FORMAT), the
    OpenAI request worker-vllm's current release makes of it."""
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
    if messages:
        _check_messages_as_openai_does(messages)
    prompt = native.prompt
    if native.apply_chat_template and prompt is not None:
        messages, prompt = [{"role": "user", "content": prompt}], None
    if output == "openai":
        params = {**native.sampling_params, **({"model": native.model} if native.model else {})}
        return _as_openai_request(params, messages, prompt, native.stream, limits)
    batching = default_batching.for_job(native.max_batch_size, native.min_batch_size, native.batch_size_growth_factor)
    return NativeRequest(prompt, messages, sampling, native.stream, batching, native.model)


def _as_openai_request(
    params: dict[str, Any], messages: list[dict[str, Any]] | None, prompt: str | None, stream: bool, limits: Limits
) -> OpenAIRequest:
    """Chat messages -> /v1/chat/completions, a prompt -> /v1/completions, the sampling parameters
    as the body's fields (vLLM's OpenAI requests take its sampling fields; the model is the served one)."""
    body = dict(params)
    if messages is not None:
        route, body["messages"] = "/v1/chat/completions", messages
        if isinstance(body.get("logprobs"), int) and not isinstance(body["logprobs"], bool):
            body["top_logprobs"], body["logprobs"] = body["logprobs"], True  # the chat API's spelling
    else:
        route, body["prompt"] = "/v1/completions", prompt
    body["stream"] = stream
    _check_openai_body(route, body, limits)
    return OpenAIRequest(route, body)


@dataclass(frozen=True)
class OpenAIRequest:
    route: str  # one of ROUTES
    body: dict[str, Any] | None  # None: a request without a body (GET)
    method: str = "POST"

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


# OpenAI body fields bounded by the worker's limits (the rest vLLM checks itself).
OPENAI_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def unknown_role(path: str, role: object) -> JobError:
    """The one refusal of a chat role this worker does not know, in either job form."""
    return JobError(f"{path}: unknown role {role!r}. Accepted roles: {', '.join(ROLES)}.", param=path)


def _check_openai_body(route: str, body: dict[str, Any], limits: Limits) -> None:
    """What this worker refuses beyond vLLM's own checks: its limits, and (as OpenAI's API does)
    chat roles it does not know, which vLLM would pass to the template as they are."""
    messages = body.get("messages") if route == "/v1/chat/completions" else None
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in ROLES:
            raise unknown_role(f"messages[{index}].role", role)
    limits.check_n(body.get("n"), "n")
    for name in OPENAI_OUTPUT_FIELDS:
        limits.check_output_tokens(body.get(name), name)


ROUTE_FORMS: dict[str, tuple[str, str, set[str]]] = {  # job form -> (route field, body field, its other fields)
    "openai": ("openai_route", "openai_input", set()),
    "route": ("route", "body", {"method"}),
}


def parse_route_job(job_input: dict[str, Any], limits: Limits) -> OpenAIRequest:
    """Either form: {"openai_route", "openai_input"} or {"route", "body", "method"}."""
    form = "openai" if ("openai_route" in job_input or "openai_input" in job_input) else "route"
    if form == "openai" and {"route", "body", "method"} & set(job_input):
        raise JobError("Give either openai_route and openai_input, or route, body and method: not both.", param="route")
    route_field, body_field, others = ROUTE_FORMS[form]
    route, body = job_input.get(route_field), job_input.get(body_field)
    unknown = sorted(set(job_input) - {route_field, body_field, *others})
    if unknown:
        raise JobError(f"Unknown field '{unknown[0]}' beside {route_field} and {body_field}.", param=unknown[0])
    route = route.rstrip("/") if isinstance(route, str) else route
    if route not in ROUTES:
        raise JobError(
            f"Unknown {route_field} {route!r}. Accepted: {', '.join(ROUTES)}.",
            param=route_field,
            type="NotFoundError",
            code=404,
        )
    method = job_input.get("method", ROUTES[route])
    if not isinstance(method, str) or method.upper() != ROUTES[route]:
        raise JobError(f"method: {route} takes {ROUTES[route]}, not {method!r}.", param="method", code=405)
    if ROUTES[route] == "GET":
        if body not in (None, {}):
            raise JobError(f"{body_field}: {route} takes no body (it is a GET route).", param=body_field)
        return OpenAIRequest(route, None, "GET")
    if not isinstance(body, dict):
        raise JobError(f"{body_field} must be a JSON object: the request body of {route}.", param=body_field)
    _check_openai_body(route, body, limits)
    return OpenAIRequest(route, body, "POST")


def parse_job(
    job: Any, *, default_batching: BatchPolicy, limits: Limits, native_output: str = "tokens"
) -> NativeRequest | OpenAIRequest:
    """A RunPod job ({"id": ..., "input": {...}}) -> the request it asks for. native_output:
    NATIVE_OUTPUT_FORMAT, the shape a native job's answer takes."""
    if not isinstance(job, dict) or "input" not in job:
        raise JobError("The job has no 'input'.", param="input")
    job_input = job["input"]
    limits.check_request_bytes(job_input)
    check_json_values(job_input)
    if isinstance(job_input, dict) and {"openai_route", "openai_input", "route"} & set(job_input):
        return parse_route_job(job_input, limits)
    return parse_native(job_input, default_batching=default_batching, limits=limits, output=native_output)
