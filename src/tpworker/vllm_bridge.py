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
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(exit_on_error=False))


@functools.cache
def _actions() -> dict[str, argparse.Action]:
    """Engine argument field name -> the CLI action vLLM registers for it."""
    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    return {
        a.dest: a
        for a in _parser()._actions
        if a.dest in fields and not a.dest.startswith("_") and a.dest not in NOT_FROM_ENVIRONMENT
    }


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
    """Every engine argument a user may set, as AsyncEngineArgs field names."""
    return sorted(_actions())


def engine_arg_default(name: str) -> Any:
    return _actions()[name].default


def engine_arg_help(name: str) -> str:
    """The first sentence of vLLM's own documentation of an engine argument ('' if none)."""
    from vllm.config.utils import get_attr_docs

    cls = _config_class_of().get(name)
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
        return [str(v) for v in json.loads(text)]
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
        elif action.nargs == "+":
            value = _parser()._get_values(action, _split_list(text))
        else:
            value = _parser()._get_values(action, [text])
    except (argparse.ArgumentError, argparse.ArgumentTypeError, ValueError, TypeError) as e:
        reason = e.message if isinstance(e, argparse.ArgumentError) else str(e)
        raise EngineArgValueError(_one_line(reason.replace("argument ", "", 1)), accepted) from None
    _check_constraints(name, value)
    return value


# --------------------------------------------------------------------------- engine configuration


def create_engine_config(engine_args: AsyncEngineArgs):
    """vLLM's full configuration from the engine arguments (validates them; loads config.json)."""
    return engine_args.create_engine_config()


def start_async_llm(vllm_config, engine_args: AsyncEngineArgs):
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_vllm_config(
        vllm_config,
        enable_log_requests=engine_args.enable_log_requests,
        disable_log_stats=engine_args.disable_log_stats,
    )


# --------------------------------------------------------------------------- prompts


def is_engine_dead(error: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


async def render_chat(llm, messages: list[dict], chat_template: str | None, max_model_len: int) -> dict:
    """Apply the chat template (the model's, or `chat_template`) and tokenize: the engine input."""
    from vllm.renderers.params import ChatParams, TokenizeParams

    params = ChatParams(chat_template=chat_template, chat_template_kwargs={"add_generation_prompt": True})
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


def sampling_params(values: dict[str, Any]):
    """SamplingParams from plain JSON values, type-checked by pydantic (vLLM's SamplingParams
    supports it) and range-checked by vLLM. Raises pydantic's ValidationError or InvalidParameter."""
    from pydantic import TypeAdapter
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    try:
        return TypeAdapter(SamplingParams).validate_python(values)
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
