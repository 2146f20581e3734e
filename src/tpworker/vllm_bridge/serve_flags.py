"""`vllm serve`'s flags (VLLM_CONFIG_FILE, VLLM_EXTRA_ARGS), the argument namespace its OpenAI layer is built
from, and the checks across options that `vllm serve` makes before loading: read by vLLM's own parser."""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any

from tpworker.vllm_bridge.arguments import (
    FRONTEND_FIELDS,
    WORKER_OWNED,
    EngineArgValueError,
    check_constraints,
    one_line,
    serve_actions,
    serve_parser,
)


def parse_flags(words: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`vllm serve` flags (`--config FILE.yaml` among them), read by `vllm serve`'s own parser, in
    its order of precedence (later flags over earlier, flags over the file's). Returns the options
    they set (name -> value, bounds checked) and the names of options they set that mean nothing
    inside a worker (host, port, ...: left out). Raises EngineArgValueError naming the flag."""
    unset = object()
    parser = serve_parser()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    try:
        parsed = parser.parse_args(words, namespace)
    except (argparse.ArgumentError, ValueError, TypeError, OSError, AssertionError) as e:
        raise EngineArgValueError(one_line(str(e).replace("argument ", "", 1)), "vllm serve's flags") from None
    except Exception as e:  # the YAML does not parse
        raise EngineArgValueError(one_line(f"{type(e).__name__}: {e}"), "a YAML mapping of flags") from None
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
        if name not in serve_actions():
            ignored.append(name)
            continue
        try:
            check_constraints(name, value)
        except EngineArgValueError as e:
            raise EngineArgValueError(f"--{name.replace('_', '-')}: {e.reason}", e.accepted) from None
        values[name] = value
    return values, sorted(ignored)


def flags_to_variables(message: str) -> str:
    """'--enable-auto-tool-choice requires --tool-call-parser' -> in our variables' names."""
    return re.sub(r"--([a-z0-9-]+)", lambda m: m.group(1).replace("-", "_").upper(), message)


def server_namespace(values: dict[str, Any]) -> argparse.Namespace:
    """The argument namespace `vllm serve` would have: its defaults, then `values`."""
    namespace = serve_parser().parse_args([])
    for name, value in values.items():
        setattr(namespace, name, value)
    return namespace


def check_server_args(values: dict[str, Any]) -> list[str]:
    """Problems `vllm serve` would refuse before loading (in our variables' names), plus parser
    names it would only reject at the first request."""
    problems = []
    # Each of vLLM 0.32's serve checks starts from a frontend option: with none set they all pass, and the
    # frontend's modules stay unimported until the OpenAI layer needs them.
    if values.keys() & FRONTEND_FIELDS:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

        try:
            validate_parsed_serve_args(server_namespace(values))
        except (TypeError, ValueError) as e:
            problems.append(flags_to_variables(str(e).removeprefix("Error: ")))
    parsers = (
        ("tool_call_parser", "tool_parser_plugin", "tool", "vllm.tool_parsers", "ToolParserManager"),
        ("reasoning_parser", "reasoning_parser_plugin", "reasoning", "vllm.reasoning", "ReasoningParserManager"),
    )
    for option, plugin, kind, module, manager in parsers:
        if not (name := values.get(option)) or values.get(plugin):
            continue
        known = sorted(getattr(importlib.import_module(module), manager).list_registered())
        if name not in known:
            problems.append(
                f"{option.upper()}={name!r} is not a vLLM {kind} parser. Accepted: {', '.join(known)} "
                f"(or a name registered by {plugin.upper()})."
            )
    return problems
