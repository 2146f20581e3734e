"""vLLM's engine arguments and `vllm serve` options, converted and checked by vLLM's own CLI parser
and config classes, so that each variable's text means what the same flag means to `vllm serve`."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from vllm import AsyncEngineArgs

if TYPE_CHECKING:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

# The options the worker owns: the one list. Each is set by the worker's own variable (read by settings.py
# before vLLM is imported, so that a bad plan is refused in seconds) and passed to the engine by the worker;
# neither a variable of the option's name nor a flag in VLLM_EXTRA_ARGS / VLLM_CONFIG_FILE sets it.
WORKER_OWNED = {
    "model": "MODEL_NAME",
    "revision": "MODEL_REVISION",
    "tokenizer": "TOKENIZER_NAME",
    "tokenizer_revision": "TOKENIZER_REVISION",
    "tensor_parallel_size": "TENSOR_PARALLEL_SIZE",
    "pipeline_parallel_size": "PIPELINE_PARALLEL_SIZE",
    "distributed_executor_backend": "DISTRIBUTED_EXECUTOR_BACKEND",
}
# Options no variable sets. hf_token: huggingface_hub reads HF_TOKEN itself, and keeping it out of the
# engine arguments keeps the secret out of everything that prints them. The rest: frontend options with no
# meaning inside a worker (no HTTP server, no scale-out endpoints).
NO_VARIABLE = frozenset(
    {
        "hf_token",
        "tokens_only",
        "enable_scale_out",
        "enable_server_load_tracking",
        "enable_tokenizer_info_endpoint",
        "sse_keep_alive_interval",
    }
)
NOT_FROM_ENVIRONMENT = frozenset(WORKER_OWNED) | NO_VARIABLE

# vLLM's OpenAI-frontend options that are not engine arguments (BaseFrontendArgs' own fields, vLLM 0.32).
# Listed, not read, so that a start whose variables set none of them needs only the engine's half of
# `vllm serve`'s parser: the frontend half imports vLLM's server modules (OpenAI and Anthropic protocols,
# FastAPI, tool parsers: time before the engine could spawn), which the OpenAI layer imports beside the
# engine's start anyway. tests/test_settings.py checks the list against vLLM's own.
FRONTEND_FIELDS = frozenset(
    {
        "anthropic_disabled_thinking_effort",
        "chat_template",
        "chat_template_content_format",
        "cohere_format",
        "cohere_is_reasoning_model",
        "default_chat_template_kwargs",
        "enable_auto_tool_choice",
        "enable_force_include_usage",
        "enable_log_deltas",
        "enable_log_outputs",
        "enable_per_request_metrics",
        "enable_prompt_tokens_details",
        "enable_scale_out",
        "enable_server_load_tracking",
        "enable_tokenizer_info_endpoint",
        "exclude_tools_when_tool_choice_none",
        "fingerprint_mode",
        "fingerprint_value",
        "log_error_stack",
        "lora_modules",
        "max_log_len",
        "response_role",
        "return_tokens_as_token_ids",
        "sse_keep_alive_interval",
        "tool_call_parser",
        "tool_parser_plugin",
        "tool_server",
        "tool_strict_level",
        "trust_request_chat_template",
        "trust_request_mm_kwargs",
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


def _refusing(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    def refuse(message: str) -> NoReturn:  # some actions call parser.error(), which would print usage and exit
        raise ValueError(message)

    parser.error = refuse  # type: ignore[method-assign]  # refuse, not exit, on this one parser
    return parser


def _flexible_parser() -> FlexibleArgumentParser:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return FlexibleArgumentParser(exit_on_error=False)  # type: ignore[no-untyped-call]  # vLLM's __init__ is untyped


@functools.cache
def serve_parser() -> argparse.ArgumentParser:
    """`vllm serve`'s own parser: every engine argument and every OpenAI-frontend option."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser

    return _refusing(make_arg_parser(_flexible_parser()))


@functools.cache
def _engine_parser() -> argparse.ArgumentParser:
    """The engine arguments' half of `vllm serve`'s parser (the same actions, which vLLM registers from
    AsyncEngineArgs alone): enough for every engine argument, without the frontend's modules."""
    return _refusing(AsyncEngineArgs.add_cli_args(_flexible_parser()))


@functools.cache
def engine_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def _settable(parser: argparse.ArgumentParser, fields: frozenset[str]) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions
        if a.dest in fields and not a.dest.startswith("_") and a.dest not in NOT_FROM_ENVIRONMENT
    }


@functools.cache
def _engine_actions() -> dict[str, argparse.Action]:
    """Engine argument -> the CLI action `vllm serve` registers for it."""
    return _settable(_engine_parser(), engine_fields())


@functools.cache
def serve_actions() -> dict[str, argparse.Action]:
    """Option name (engine or frontend field) -> the CLI action `vllm serve` registers for it."""
    return _settable(serve_parser(), engine_fields() | FRONTEND_FIELDS)


def _parser_and_action(name: str) -> tuple[argparse.ArgumentParser, argparse.Action]:
    """The option's CLI action and the parser holding it: the engine's half of the parser for an engine
    argument, so that reading engine arguments never builds the frontend's half."""
    if is_engine_arg(name):
        return _engine_parser(), _engine_actions()[name]
    return serve_parser(), serve_actions()[name]


def option_action(name: str) -> argparse.Action:
    return _parser_and_action(name)[1]


def is_engine_arg(name: str) -> bool:
    """An AsyncEngineArgs field (else an option of vLLM's OpenAI frontend)."""
    return name in engine_fields()


@functools.cache
def _config_class_of() -> dict[str, type]:
    """Engine argument -> the vLLM config class it belongs to (vLLM titles each group by it)."""
    import vllm.config

    owners = {}
    for group in _engine_parser()._action_groups:
        cls = getattr(vllm.config, group.title or "", None)
        if cls is None:
            continue
        for action in group._group_actions:
            owners[action.dest] = cls
    return owners


def engine_arg_names() -> list[str]:
    """Every vLLM option a user may set: AsyncEngineArgs fields and OpenAI-frontend options."""
    frontend = {name for name in FRONTEND_FIELDS if name not in NOT_FROM_ENVIRONMENT}
    return sorted(_engine_actions().keys() | frontend)


def engine_arg_default(name: str) -> Any:
    return option_action(name).default


def choices_of(name: str) -> list[Any]:
    """The values vLLM accepts for an option with a fixed set (e.g. MAX_LORA_RANK), else []."""
    return [c for c in (option_action(name).choices or []) if c is not None]


def engine_arg_help(name: str) -> str:
    """The first sentence of vLLM's own documentation of an engine argument ('' if none)."""
    from vllm.config.utils import get_attr_docs

    cls = _config_class_of().get(name)
    if cls is None and name in FRONTEND_FIELDS:
        from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

        cls = BaseFrontendArgs
    docs = get_attr_docs(cls) if cls is not None else {}
    text = " ".join(docs.get(name, "").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _field_constraints(name: str) -> list[object]:
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
    if _is_switch(action):
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


def _is_switch(action: argparse.Action) -> bool:
    """A flag that takes no value (vLLM's are store_true and --x/--no-x): its variable is a yes/no."""
    return action.nargs == 0


def one_line(reason: str) -> str:
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
    if text.startswith("{"):  # one JSON object (a LoRA module given as {"name": ..., "path": ...})
        return [text]
    if text.startswith("["):
        return [json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in json.loads(text)]
    return [part for part in text.replace(",", " ").split() if part]


def check_constraints(name: str, value: Any) -> None:
    """Apply the bounds vLLM's config class declares for the field (e.g. 0 < x <= 1)."""
    from pydantic import TypeAdapter, ValidationError

    constraints = _field_constraints(name)
    if not constraints or value is None or isinstance(value, (list, dict, bool)):
        return
    try:
        annotation: Any = Annotated[type(value), *constraints]  # built at run time: a type mypy cannot follow
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as e:
        raise EngineArgValueError(e.errors()[0]["msg"], _accepted(option_action(name))) from None


def parse_engine_arg(name: str, text: str) -> Any:
    """Convert one environment string to the engine argument's value, exactly as `vllm serve`
    would convert the same text given on its command line, then check the field's bounds."""
    parser, action = _parser_and_action(name)
    accepted = _accepted(action)
    try:
        if _is_switch(action):
            value = _parse_bool(text)
        elif action.nargs == "?" and text.strip().lower() in TRUE_WORDS:
            value = action.const
        else:
            # The flag alone through vLLM's parser, as `vllm serve` reads it (its type, choices and action:
            # some, LoRA modules, turn the text into objects); one variable per parse: one error each.
            flag = max(action.option_strings, key=len)
            words = [flag, *_split_list(text)] if action.nargs in ("+", "*") else [f"{flag}={text}"]
            value = getattr(parser.parse_args(words, argparse.Namespace()), action.dest)
    except (argparse.ArgumentError, argparse.ArgumentTypeError, ValueError, TypeError) as e:
        reason = e.message if isinstance(e, argparse.ArgumentError) else str(e)
        raise EngineArgValueError(one_line(reason.replace("argument ", "", 1)), accepted) from None
    check_constraints(name, value)
    return value
