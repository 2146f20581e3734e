"""The one module that touches vLLM internals.

Everything here goes beyond vLLM's public `AsyncLLM` / `AsyncEngineArgs` / `SamplingParams`: the CLI
parser that converts engine arguments, the config classes that hold their constraints, the
renderer that applies chat templates and tokenizes, and the OpenAI serving layer. A vLLM upgrade
touches this file; the end-to-end tests on the real CPU engine catch what it breaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any

from vllm import AsyncEngineArgs

# Engine arguments that are not read from the environment under their own name.
# hf_token: huggingface_hub reads HF_TOKEN itself; keeping it out of the engine arguments keeps
# the secret out of everything that prints them.
# The model and the parallel layout are read by settings.py before vLLM is imported (so that a bad
# plan is refused in seconds), and passed to the engine by the worker.
NOT_FROM_ENVIRONMENT = frozenset(
    {
        "hf_token",
        "model",
        "revision",
        "tokenizer",
        "tokenizer_revision",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "distributed_executor_backend",
        # Frontend options with no meaning inside a worker (no HTTP server, no scale-out endpoints).
        "tokens_only",
        "enable_scale_out",
        "enable_server_load_tracking",
        "enable_tokenizer_info_endpoint",
        "sse_keep_alive_interval",
    }
)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class EngineArgValueError(ValueError):
    """A value that vLLM would not accept for one engine argument; `accepted` says what would."""

    def __init__(self, reason: str, accepted: str):
        super().__init__(reason)
        self.reason = reason
        self.accepted = accepted


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """`vllm serve`'s own parser: every engine argument and every OpenAI-frontend option."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(exit_on_error=False))

    def refuse(message: str):  # some actions call parser.error(), which would print usage and exit
        raise ValueError(message)

    parser.error = refuse
    return parser


@functools.cache
def _engine_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


@functools.cache
def _frontend_fields() -> frozenset[str]:
    from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

    return frozenset(f.name for f in dataclasses.fields(BaseFrontendArgs)) - _engine_fields()


@functools.cache
def _actions() -> dict[str, argparse.Action]:
    """Option name (engine or frontend field) -> the CLI action `vllm serve` registers for it."""
    fields = _engine_fields() | _frontend_fields()
    return {
        a.dest: a
        for a in _parser()._actions
        if a.dest in fields and not a.dest.startswith("_") and a.dest not in NOT_FROM_ENVIRONMENT
    }


def is_engine_arg(name: str) -> bool:
    """An AsyncEngineArgs field (else an option of vLLM's OpenAI frontend)."""
    return name in _engine_fields()


@functools.cache
def _config_class_of() -> dict[str, type]:
    """Engine argument -> the vLLM config class it belongs to (vLLM titles each group by it)."""
    import vllm.config

    owners = {}
    for group in _parser()._action_groups:
        cls = getattr(vllm.config, group.title or "", None)
        if cls is None:
            continue
        for action in group._group_actions:
            owners[action.dest] = cls
    return owners


def engine_arg_names() -> list[str]:
    """Every vLLM option a user may set: AsyncEngineArgs fields and OpenAI-frontend options."""
    return sorted(_actions())


def engine_arg_default(name: str) -> Any:
    return _actions()[name].default


def engine_arg_help(name: str) -> str:
    """The first sentence of vLLM's own documentation of an engine argument ('' if none)."""
    from vllm.config.utils import get_attr_docs

    cls = _config_class_of().get(name)
    if cls is None and name in _frontend_fields():
        from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

        cls = BaseFrontendArgs
    docs = get_attr_docs(cls) if cls is not None else {}
    text = " ".join(docs.get(name, "").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _field_constraints(name: str) -> list:
    """The annotated-types bounds (Gt, Le, ...) vLLM's config class declares for a field."""
    cls = _config_class_of().get(name)
    field = getattr(cls, "__pydantic_fields__", {}).get(name)
    return list(field.metadata) if field is not None else []


def _bounds(name: str) -> str:
    return ", ".join(
        f"{kind} {getattr(c, attr)}"
        for c in _field_constraints(name)
        for attr, kind in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(c, attr, None) is not None
    )


def _accepted(action: argparse.Action) -> str:
    """Words for what an engine argument accepts."""
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
        return "true or false (also 1/0, yes/no, on/off)"
    if action.choices:
        return "one of " + ", ".join(str(c) for c in action.choices if c is not None)
    kind = getattr(action.type, "__name__", "")
    words = {
        "int": "an integer",
        "float": "a number",
        "human_readable_int": "an integer (1k, 2M, 1G suffixes allowed)",
        "human_readable_int_or_auto": "an integer (1k, 32K suffixes allowed) or auto",
        "parse_dataclass": "a JSON object",
        "union_dict_and_str": "a string or a JSON object",
        "_parse_type": "a JSON value",
    }.get(kind, "a string")
    if (bounds := _bounds(action.dest)) and "auto" not in words:
        words += f" {bounds}"
    if action.nargs == "+":
        return f"a list of values (a JSON array, or separated by spaces or commas), each {words}"
    return words


def _one_line(reason: str) -> str:
    """vLLM reports nested-config errors as multi-line pydantic text; a start error is one line."""
    reason = re.sub(r"For further information visit \S+", "", reason)
    reason = re.sub(r"\[type=.*?\]", "", reason)
    return " ".join(reason.split()).rstrip(".")


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not a yes/no value")


def _split_list(text: str) -> list[str]:
    import json

    text = text.strip()
    if text.startswith("["):
        return [json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in json.loads(text)]
    return [part for part in text.replace(",", " ").split() if part]


def _check_constraints(name: str, value: Any) -> None:
    """Apply the bounds vLLM's config class declares for the field (e.g. 0 < x <= 1)."""
    from pydantic import TypeAdapter, ValidationError

    constraints = _field_constraints(name)
    if not constraints or value is None or isinstance(value, (list, dict, bool)):
        return
    try:
        TypeAdapter(Annotated[type(value), *constraints]).validate_python(value)
    except ValidationError as e:
        raise EngineArgValueError(e.errors()[0]["msg"], _accepted(_actions()[name])) from None


def parse_engine_arg(name: str, text: str) -> Any:
    """Convert one environment string to the engine argument's value, exactly as `vllm serve`
    would convert the same text given on its command line, then check the field's bounds."""
    action = _actions()[name]
    accepted = _accepted(action)
    try:
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            value = _parse_bool(text)
        elif action.nargs == "?" and text.strip().lower() in TRUE_WORDS:
            value = action.const
        else:
            strings = _split_list(text) if action.nargs in ("+", "*") else [text]
            # Run the action itself: some (LoRA modules) turn the converted text into objects.
            namespace = argparse.Namespace()
            action(_parser(), namespace, _parser()._get_values(action, strings), action.option_strings[0])
            value = getattr(namespace, action.dest)
    except (argparse.ArgumentError, argparse.ArgumentTypeError, ValueError, TypeError) as e:
        reason = e.message if isinstance(e, argparse.ArgumentError) else str(e)
        raise EngineArgValueError(_one_line(reason.replace("argument ", "", 1)), accepted) from None
    _check_constraints(name, value)
    return value


# --------------------------------------------------------------------------- engine configuration


def create_engine_config(engine_args: AsyncEngineArgs):
    """vLLM's full configuration from the engine arguments (validates them; loads config.json)."""
    return engine_args.create_engine_config()


def trace_once_eager_compilation() -> dict[str, Any]:
    """A compilation config that traces the model once with dynamo and runs the trace with torch's
    eager backend: the warm-up pass of a compiled mode, the kernels of eager mode."""
    from vllm.config import CompilationMode

    return {"mode": int(CompilationMode.DYNAMO_TRACE_ONCE), "backend": "eager"}


def ray_unsupported_reason() -> str | None:
    """Why vLLM cannot run this machine's ranks on Ray, or None if it can. vLLM asks Ray for one
    unit of the platform's Ray resource per rank (GPU on CUDA); its CPU platform names none, and its
    Ray executor then stops the engine core with "current platform cpu does not support ray."."""
    from vllm.platforms import current_platform

    if current_platform.ray_device_key:
        return None
    name = current_platform.device_name
    return (
        f"vLLM's {name} platform cannot run its ranks on Ray: it names no Ray resource to place them on "
        f'(vLLM\'s Ray executor stops with "current platform {name} does not support ray.")'
    )


def start_async_llm(vllm_config, engine_args: AsyncEngineArgs, on_engine_step=None):
    """AsyncLLM for the config. `on_engine_step()` is called each time the engine core reports
    a step (through vLLM's stat-logger interface), which is how the watchdog sees progress."""
    from vllm.v1.engine.async_llm import AsyncLLM

    loggers = [_step_logger_factory(on_engine_step)] if on_engine_step else None
    return AsyncLLM.from_vllm_config(
        vllm_config,
        enable_log_requests=engine_args.enable_log_requests,
        disable_log_stats=engine_args.disable_log_stats,
        stat_loggers=loggers,
    )


def _step_logger_factory(on_engine_step):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            on_engine_step()

        def log_engine_initialized(self):
            pass

    return StepLogger


# --------------------------------------------------------------------------- prompts


def is_engine_dead(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


async def render_chat(
    llm, messages: list[dict], chat_template: str | None, template_kwargs: dict, max_model_len: int
) -> dict:
    """Apply the chat template (the model's, or `chat_template`) and tokenize: the engine input."""
    from vllm.renderers.params import ChatParams, TokenizeParams

    params = ChatParams(
        chat_template=chat_template, chat_template_kwargs={**template_kwargs, "add_generation_prompt": True}
    )
    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=False)
    _, (engine_input,) = await llm.renderer.render_chat_async([messages], params, tokenize)
    return engine_input


async def render_text(llm, prompt: str, max_model_len: int) -> dict:
    """Tokenize a plain prompt (special tokens added as the tokenizer does): the engine input."""
    from vllm.renderers.params import TokenizeParams

    tokenize = TokenizeParams(max_total_tokens=max_model_len, add_special_tokens=True)
    (engine_input,) = await llm.renderer.render_cmpl_async([{"prompt": prompt}], tokenize)
    return engine_input


def prompt_token_ids(engine_input: dict) -> list[int]:
    return list(engine_input["prompt_token_ids"])


# --------------------------------------------------------------------------- sampling parameters

# SamplingParams fields a job may not set: the worker sets them, or they are engine internals.
INTERNAL_SAMPLING_FIELDS = frozenset(
    {"output_kind", "skip_clone", "output_text_buffer_length", "routed_experts_prompt_start", "trace_decode_token_ids"}
)


class InvalidParameter(ValueError):
    """A request value vLLM refuses; `parameter` names it (None when vLLM does not say)."""

    def __init__(self, message: str, parameter: str | None):
        super().__init__(message)
        self.parameter = parameter


def sampling_param_names() -> list[str]:
    from vllm import SamplingParams

    return sorted(
        f for f in SamplingParams.__struct_fields__ if not f.startswith("_") and f not in INTERNAL_SAMPLING_FIELDS
    )


@functools.cache
def _sampling_params_adapter():
    """Built once: building pydantic's adapter for SamplingParams takes ~0.6 ms, per job otherwise
    (measured by tpworker bench's profiling); validating with it takes ~0.01 ms."""
    from pydantic import TypeAdapter
    from vllm import SamplingParams

    return TypeAdapter(SamplingParams)


def sampling_params(values: dict[str, Any]):
    """SamplingParams from plain JSON values, type-checked by pydantic (vLLM's SamplingParams
    supports it) and range-checked by vLLM. Raises pydantic's ValidationError or InvalidParameter."""
    from vllm.exceptions import VLLMValidationError

    try:
        return _sampling_params_adapter().validate_python(values)
    except VLLMValidationError as e:
        raise InvalidParameter(str(e).split(" (parameter=")[0], getattr(e, "parameter", None)) from None
    except ValueError as e:
        if type(e).__name__ == "ValidationError":
            raise
        raise InvalidParameter(str(e), None) from None


def as_invalid_parameter(error: BaseException) -> InvalidParameter | None:
    """vLLM's 'the request is wrong' errors raised while generating, as InvalidParameter."""
    from vllm.exceptions import VLLMValidationError

    if isinstance(error, VLLMValidationError):
        return InvalidParameter(str(error).split(" (parameter=")[0], getattr(error, "parameter", None))
    return None


# --------------------------------------------------------------------------- the OpenAI frontend


def flags_to_variables(message: str) -> str:
    """'--enable-auto-tool-choice requires --tool-call-parser' -> in our variables' names."""
    return re.sub(r"--([a-z0-9-]+)", lambda m: m.group(1).replace("-", "_").upper(), message)


def server_namespace(values: dict[str, Any]):
    """The argument namespace `vllm serve` would have: its defaults, then `values`."""
    namespace = _parser().parse_args([])
    for name, value in values.items():
        setattr(namespace, name, value)
    return namespace


def check_server_args(values: dict[str, Any]) -> list[str]:
    """Problems `vllm serve` would refuse before loading (in our variables' names), plus parser
    names it would only reject at the first request."""
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    problems = []
    try:
        validate_parsed_serve_args(server_namespace(values))
    except (TypeError, ValueError) as e:
        problems.append(flags_to_variables(str(e).removeprefix("Error: ")))
    parsers = (
        ("tool_call_parser", "tool_parser_plugin", "tool", ToolParserManager),
        ("reasoning_parser", "reasoning_parser_plugin", "reasoning", ReasoningParserManager),
    )
    for option, plugin, kind, manager in parsers:
        name, known = values.get(option), sorted(manager.list_registered())
        if name and not values.get(plugin) and name not in known:
            problems.append(
                f"{option.upper()}={name!r} is not a vLLM {kind} parser. Accepted: {', '.join(known)} "
                f"(or a name registered by {plugin.upper()})."
            )
    return problems


def load_chat_template(template: str | None) -> str | None:
    """A chat template given as a file path or as the template itself (vLLM's rule)."""
    from vllm.renderers.chat_utils import load_chat_template as load

    return load(template)


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None

    @property
    def active(self) -> bool:
        return self.max_prompt_tokens is not None or self.max_output_tokens is not None


class LimitedEngineClient:
    """The AsyncLLM as vLLM's OpenAI serving objects see it, with this worker's limits applied to
    each request once vLLM has tokenized it: the prompt length is exact (chat template, tools and
    all), and a max_tokens vLLM defaulted is capped at MAX_OUTPUT_TOKENS (an explicit one over it
    was refused before, by name). Everything else is the AsyncLLM's own."""

    def __init__(self, llm, limits: RequestLimits):
        self._llm, self._limits = llm, limits

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        limit = self._limits.max_prompt_tokens
        if limit is not None:
            count = len(prompt.get("prompt_token_ids") or ()) if isinstance(prompt, dict) else 0
            if count > limit:
                # ValueError: vLLM's error mapping makes it a 400 with this message
                raise ValueError(
                    f"The prompt is {count} tokens, above this worker's limit of {limit} (MAX_PROMPT_TOKENS)."
                )
        cap = self._limits.max_output_tokens
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
        cls, llm, model: str, served_names: list[str], options: dict[str, Any], limits: RequestLimits | None = None
    ) -> OpenAIServer:
        """Call inside the event loop that serves jobs (the engine binds to it)."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        if limits is not None and limits.active:
            llm = LimitedEngineClient(llm, limits)

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

    async def call(self, route: str, body: dict):
        """Run one OpenAI request. Returns ("json", dict, status) or ("sse", async iterator of
        SSE strings, 200). Every failure comes back as OpenAI's error object with its status."""
        from pydantic import ValidationError

        try:
            if route == "/v1/models":
                models = await self._state.openai_serving_models.show_available_models()
                return "json", models.model_dump(), 200
            request = self._request_type(route).model_validate(body)
            if route == "/v1/chat/completions":
                result = await self._state.openai_serving_chat.create_chat_completion(request, None)
            elif route == "/v1/completions":
                result = await self._state.openai_serving_completion.create_completion(request, None)
            else:
                result = await self._state.openai_serving_responses.create_responses(request, None)
        except ValidationError as e:
            return "json", self.validation_error(e), 400
        except Exception as e:  # vLLM raises some request errors instead of returning them
            if is_engine_dead(e):
                raise
            error = self.error_from_exception(e)
            return "json", error, error["error"]["code"]
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(result, ErrorResponse):
            return "json", result.model_dump(), result.error.code
        if hasattr(result, "model_dump"):
            return "json", result.model_dump(mode="json", by_alias=True), 200
        if route == "/v1/responses":
            from vllm.entrypoints.openai.responses.api_router import _convert_stream_to_sse_events

            result = _convert_stream_to_sse_events(result)
        return "sse", result, 200

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


# --------------------------------------------------------------------------- measurements (tpworker bench)

# Engine arguments for measuring each rank's weight memory: worker_extension_cls adds
# WeightsProbe's method to every vLLM worker; on CPU, worker_cls=MEASURED_CPU_WORKER also measures
# the load (vLLM's GPU workers measure it themselves: "Model loading took X GiB").
WEIGHTS_PROBE = "tpworker.vllm_bridge.WeightsProbe"
MEASURED_CPU_WORKER = "tpworker.vllm_bridge.MeasuredCPUWorker"


def _process_memory() -> int:
    """This process's resident memory, after returning freed heap pages to the system (so that
    what the load allocated and freed again does not count)."""
    import ctypes
    import gc

    import psutil

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return psutil.Process().memory_info().rss


def __getattr__(name: str):
    """MeasuredCPUWorker is built on first use: it subclasses vLLM's CPU worker, which only the
    rank processes of a CPU engine import."""
    if name != "MeasuredCPUWorker":
        raise AttributeError(name)
    from vllm.v1.worker.cpu_worker import CPUWorker

    class MeasuredCPUWorker(CPUWorker):
        """vLLM's CPU worker, plus the memory the model load added to the rank's process. On CPU
        vLLM packs linear weights into oneDNN buffers that are not torch tensors, so only the
        process's memory sees them."""

        def load_model(self, *args, **kwargs):
            before = _process_memory()
            super().load_model(*args, **kwargs)
            self.model_runner.model_memory_usage = _process_memory() - before

    MeasuredCPUWorker.__module__, MeasuredCPUWorker.__qualname__ = __name__, "MeasuredCPUWorker"
    globals()["MeasuredCPUWorker"] = MeasuredCPUWorker
    return MeasuredCPUWorker


class WeightsProbe:
    """Mixed into each vLLM worker (rank) by `worker_extension_cls=WEIGHTS_PROBE`, so that
    `collective_rpc` can ask every rank what its loaded model holds."""

    def tpworker_weights_memory(self) -> dict:
        model = self.model_runner.get_model()
        seen, held = set(), 0
        for tensor in [*model.parameters(), *model.buffers()]:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:  # tied weights share one storage: count it once
                seen.add(storage.data_ptr())
                held += storage.nbytes()
        loading = int(getattr(self.model_runner, "model_memory_usage", 0) or 0)
        return {"rank": int(getattr(self, "rank", 0)), "loading_bytes": loading or None, "tensor_bytes": held}


async def weights_memory_per_rank(llm) -> list[dict]:
    """Per rank: the memory the model load took (GPU: vLLM's own measure of device memory; CPU:
    the rank process's, with MEASURED_CPU_WORKER), and the bytes of the torch tensors the model
    holds. Needs an engine started with WEIGHTS_PROBE."""
    return sorted(await llm.collective_rpc("tpworker_weights_memory"), key=lambda r: r["rank"])
