"""vLLM's engine arguments and `vllm serve` options, converted and checked by vLLM's own CLI parser
and config classes, so that each variable's text means what the same flag means to `vllm serve`."""

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


def choices_of(name: str) -> list:
    """The values vLLM accepts for an option with a fixed set (e.g. MAX_LORA_RANK), else []."""
    return [c for c in (_actions()[name].choices or []) if c is not None]


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
    if text.startswith("{"):  # one JSON object (a LoRA module given as {"name": ..., "path": ...})
        return [text]
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


# Options the worker decides before vLLM is imported, from its own variables: a flag cannot move them.
WORKER_OWNED = {
    "model": "MODEL_NAME",
    "revision": "MODEL_REVISION",
    "tokenizer": "TOKENIZER_NAME",
    "tokenizer_revision": "TOKENIZER_REVISION",
    "tensor_parallel_size": "TENSOR_PARALLEL_SIZE",
    "pipeline_parallel_size": "PIPELINE_PARALLEL_SIZE",
    "distributed_executor_backend": "DISTRIBUTED_EXECUTOR_BACKEND",
}


def parse_flags(words: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`vllm serve` flags (`--config FILE.yaml` among them), read by `vllm serve`'s own parser, in
    its order of precedence (later flags over earlier, flags over the file's). Returns the options
    they set (name -> value, bounds checked) and the names of options they set that mean nothing
    inside a worker (host, port, ...: left out). Raises EngineArgValueError naming the flag."""
    unset = object()
    parser = _parser()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    try:
        parsed = parser.parse_args(words, namespace)
    except (argparse.ArgumentError, ValueError, TypeError, OSError, AssertionError) as e:
        raise EngineArgValueError(_one_line(str(e).replace("argument ", "", 1)), "vllm serve's flags") from None
    except Exception as e:  # the YAML does not parse
        raise EngineArgValueError(_one_line(f"{type(e).__name__}: {e}"), "a YAML mapping of flags") from None
    given = {name: value for name, value in vars(parsed).items() if value is not unset}
    if given.pop("model_tag", None) is not None:  # `vllm serve MODEL`'s positional model
        given["model"] = True
    for name, variable in WORKER_OWNED.items():
        if name in given:
            what = "the model" if name == "model" else "--" + name.replace("_", "-")
            raise EngineArgValueError(
                f"{what} is the worker's to set (it plans the model and its layout before vLLM starts)",
                f"{variable} instead",
            )
    values, ignored = {}, []
    for name, value in given.items():
        if name not in _actions():
            ignored.append(name)
            continue
        try:
            _check_constraints(name, value)
        except EngineArgValueError as e:
            raise EngineArgValueError(f"--{name.replace('_', '-')}: {e.reason}", e.accepted) from None
        values[name] = value
    return values, sorted(ignored)


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
