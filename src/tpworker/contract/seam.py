"""A seam: one thing of vLLM or the RunPod SDK that the worker relies on beyond their public interfaces, and
the check that says whether the installed release still has it.

A seam names its target as "module" or "module:Qualified.name" and may ask for parameters (names a call or
an override uses), fields (attributes the worker reads or sets: dataclass or pydantic fields, class
attributes, or attributes the class's own code sets on `self`), texts (fragments of the module's source: the
log messages the worker reads, code it relies on) and a value. A text a module no longer holds is looked
for in its whole package: a log message that moved to another module still reaches the log; code text is
looked for in its function or class only. `check` imports the target and returns what
moved, in words; nothing moved is an empty list."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpworker.errors import in_one_line

_NO_VALUE = object()


@dataclass(frozen=True)
class Seam:
    target: str  # "package.module" or "package.module:Class.attribute"
    used_by: str  # the worker's module that relies on it (path under src/tpworker/)
    why: str  # what it is used for, and why no public interface serves
    parameters: tuple[str, ...] = ()
    exact: bool = False  # the parameters are exactly these, in this order (an override's signature)
    fields: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    value: Any = _NO_VALUE

    @property
    def package(self) -> str:
        return self.target.split(".", 1)[0].split(":", 1)[0]


def resolve(target: str) -> Any:
    """The object a target names (ImportError or AttributeError when it is gone)."""
    module_name, _, qualified = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualified.split(".") if qualified else ():
        found = getattr(found, part)
    return found


def check(seam: Seam) -> list[str]:
    """What moved: one sentence per difference from what the worker expects."""
    try:
        found = resolve(seam.target)
    except ImportError as e:
        return [f"cannot import it: {in_one_line(e)}"]
    except AttributeError as e:
        return [f"it is gone: {in_one_line(e)}"]
    problems = []
    if seam.parameters:
        problems += _parameter_problems(found, seam.parameters, seam.exact)
    if seam.fields:
        missing = [name for name in seam.fields if not _has_field(found, name)]
        if missing:
            problems.append(f"no field {', '.join(missing)}")
    if seam.texts:
        source = _source(found)
        missing = [text for text in seam.texts if text not in source]
        if missing and inspect.ismodule(found):  # a log message moved to another module still reaches the log
            missing = [text for text in missing if text not in _package_source(seam.package)]
        if missing:
            problems.append("its source no longer contains " + "; ".join(repr(text) for text in missing))
    if seam.value is not _NO_VALUE and found != seam.value:
        problems.append(f"its value is {found!r}, not {seam.value!r}")
    return problems


def _parameter_problems(found: Any, expected: tuple[str, ...], exact: bool) -> list[str]:
    try:
        parameters = inspect.signature(found).parameters
    except (TypeError, ValueError) as e:
        return [f"has no signature: {e}"]
    names = [name for name in parameters if name not in ("args", "kwargs")]
    if exact:
        if list(parameters) != list(expected):
            return [f"parameters are ({', '.join(parameters)}), not ({', '.join(expected)})"]
        return []
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    problems = []
    missing = [name for name in expected if name not in parameters and not takes_any_keyword]
    if missing:
        problems.append(f"no parameter {', '.join(missing)} (has: {', '.join(names)})")
    # a new parameter without a default breaks every call that does not pass it
    required = [
        name
        for name, p in parameters.items()
        if name not in expected
        and name not in ("self", "cls")
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        problems.append(f"new required parameter {', '.join(required)}")
    return problems


def _has_field(found: Any, name: str) -> bool:
    if dataclasses.is_dataclass(found) and name in {f.name for f in dataclasses.fields(found)}:
        return True
    if name in (getattr(found, "model_fields", None) or {}):  # pydantic
        return True
    if hasattr(found, name):
        return True
    # an attribute the class sets on its instances in its own code
    return inspect.isclass(found) and re.search(rf"\bself\.{name}\s*(:[^=]*)?=", _source(found)) is not None


@functools.cache
def _package_source(package: str) -> str:
    root = Path(resolve(package).__file__ or "").parent
    return "\n".join(path.read_text(errors="replace") for path in sorted(root.rglob("*.py")))


def _source(found: Any) -> str:
    try:
        return inspect.getsource(found)
    except (OSError, TypeError):
        return ""
