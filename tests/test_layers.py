"""The layer rules of docs/DESIGN.md, checked on the source rather than only written down:
- each package imports only the packages below it (LAYERS), at any depth of the code;
- config/settings.py alone reads the environment (others may hand the whole of it to a child process, or set it);
- planning/ never imports vLLM, even lazily; the modules the start-up imports before its plan is checked
  (config, planning, models, startup.model_and_layout) pull in no vLLM (a bad plan is refused before vLLM's
  seconds of import);
- vllm_bridge/ alone touches vLLM beyond its public AsyncEngineArgs / SamplingParams / RequestOutputKind;
- serving/jobloop.py alone touches runpod's internals (others call `runpod.serverless.start`, its public entry).
Each rule reads the modules' syntax trees (ast), so a comment or a string naming a module does not count."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "tpworker"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [ROOT / "handler.py"]

ENVIRONMENT_READER = PACKAGE / "config" / "settings.py"
# Reads of the environment allowed elsewhere, each with its reason.
ENVIRONMENT_EXCEPTIONS = {
    # sets the variables vLLM reads once per start, and reads what was there to restore it when the worker closes
    PACKAGE / "startup" / "start.py": 1,
}
VLLM_BRIDGE = PACKAGE / "vllm_bridge"
VLLM_PUBLIC = {
    "vllm": {"AsyncEngineArgs", "SamplingParams", "AsyncLLMEngine"},
    "vllm.sampling_params": {"RequestOutputKind", "SamplingParams"},
}
RUNPOD_INTERNALS_USER = PACKAGE / "serving" / "jobloop.py"
# Imported by the start-up path before the plan is checked: none may import vLLM when imported.
BEFORE_THE_PLAN = ["config", "planning", "models", "startup.model_and_layout", "errors", "timeline"]

# What each part of the package may import from the others: the ones below it. Entry points (the
# commands and handler.py's app) sit on top and may use anything.
LAYERS = {
    "errors": set(),
    "timeline": set(),
    "vllm_bridge": set(),
    "config": {"errors", "vllm_bridge"},
    "planning": {"errors", "config"},
    "models": {"errors", "config", "planning"},
    "serving": {"errors", "timeline", "config", "vllm_bridge"},
    "startup": {"errors", "timeline", "config", "planning", "models", "serving", "vllm_bridge"},
}
# contract/ names vLLM's and runpod's internals as strings and imports them only to check them.
ENTRY_POINTS = {"app", "local_run", "cli", "__main__", "dev", "cluster", "bench", "contract", "lb"}


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_os_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", None) == "os"


def environment_reads(module: ast.Module) -> list[int]:
    """Lines that read a variable: os.getenv(...), os.environ.get(...), os.environ[...] read, `in os.environ`."""
    lines = []
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            if target.attr == "getenv" and getattr(target.value, "id", None) == "os":
                lines.append(node.lineno)
            elif target.attr in ("get", "setdefault", "items", "keys", "values") and _is_os_environ(target.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value) and isinstance(node.ctx, ast.Load):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(_is_os_environ(c) for c in node.comparators):
            lines.append(node.lineno)
    return lines


def imports(module: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module, name imported from it or None, line) for every import, at any depth."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def part_of(path: Path) -> str:
    """The package (or top-level module) of tpworker a source file belongs to."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def tpworker_parts(module: ast.Module) -> list[tuple[str, int]]:
    """(part of tpworker, line) for every import of tpworker's own code."""
    found = []
    for name, item, line in imports(module):
        parts = name.split(".")
        if parts[0] != "tpworker":
            continue
        found.append((parts[1] if len(parts) > 1 else item, line))
    return found


def layer_breaches(path: Path, module: ast.Module) -> list[str]:
    part = part_of(path)
    if part in ENTRY_POINTS:
        return []
    allowed = LAYERS[part] | {part}
    return [f"imports tpworker.{other} (line {line})" for other, line in tpworker_parts(module) if other not in allowed]


def vllm_internals(module: ast.Module) -> list[str]:
    used = []
    for name, item, line in imports(module):
        if name.split(".")[0] != "vllm":
            continue
        if item is None or item not in VLLM_PUBLIC.get(name, set()):
            used.append(f"{name}{'' if item is None else ' ' + item} (line {line})")
    return used


def runpod_internals(module: ast.Module) -> list[str]:
    return [
        f"{name}{'' if item is None else ' ' + item} (line {line})"
        for name, item, line in imports(module)
        if name.split(".")[0] == "runpod" and (name, item) != ("runpod", None)
    ]


def test_only_settings_reads_the_environment():
    readers = {}
    for path in SOURCES:
        lines = environment_reads(tree(path))
        if path != ENVIRONMENT_READER and len(lines) > ENVIRONMENT_EXCEPTIONS.get(path, 0):
            readers[str(path.relative_to(ROOT))] = lines
    assert not readers, f"read the environment through tpworker.config.settings instead: {readers}"


def test_every_part_is_known_to_the_layer_rules():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYERS) | ENTRY_POINTS, (
        f"place these in LAYERS or ENTRY_POINTS: {parts - set(LAYERS) - ENTRY_POINTS}"
    )


def test_each_package_imports_only_the_layers_below_it():
    breaches = {
        str(p.relative_to(ROOT)): found
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE
        if (found := layer_breaches(p, tree(p)))
    }
    assert not breaches, f"these imports cross the layers of docs/DESIGN.md upwards: {breaches}"


def test_only_vllm_bridge_touches_vllm_internals():
    users = {
        str(p.relative_to(ROOT)): used
        for p in SOURCES
        if VLLM_BRIDGE not in p.parents and (used := vllm_internals(tree(p)))
    }
    assert not users, f"move these uses of vLLM into tpworker.vllm_bridge: {users}"


def test_planning_never_imports_vllm_even_lazily():
    users = {
        str(p.relative_to(ROOT)): found
        for p in (PACKAGE / "planning").rglob("*.py")
        if (found := [name for name, _, _ in imports(tree(p)) if name.split(".")[0] == "vllm"])
    }
    assert not users, users


def test_only_jobloop_touches_runpod_internals():
    users = {
        str(p.relative_to(ROOT)): used
        for p in SOURCES
        if p != RUNPOD_INTERNALS_USER and (used := runpod_internals(tree(p)))
    }
    assert not users, f"move these uses of runpod into serving/jobloop.py: {users}"


def modules_before_the_plan() -> list[str]:
    names = []
    for name in BEFORE_THE_PLAN:
        folder = PACKAGE / name
        if folder.is_dir():
            names += [f"{name}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.name != "__init__.py"]
        else:
            names.append(name)
    return names


def test_the_start_up_imports_no_vllm_before_its_plan_is_checked():
    """Imported in a fresh interpreter: vLLM must not be among the modules they pull in, however indirectly."""
    code = (
        "import sys\n"
        + "".join(f"import tpworker.{name}\n" for name in modules_before_the_plan())
        + "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_rules_would_catch_a_mistake():
    sample = ast.parse(
        "import os\nimport vllm.v1.engine\nfrom vllm import LLM, SamplingParams\n"
        "from runpod.serverless import modules\nimport runpod\n"
        "x = os.environ['A']\ny = os.getenv('B')\nz = 'C' in os.environ\nenv = {**os.environ}\nos.environ['D'] = '1'\n"
    )
    assert environment_reads(sample) == [6, 7, 8]
    assert vllm_internals(sample) == ["vllm.v1.engine (line 2)", "vllm LLM (line 3)"]
    assert runpod_internals(sample) == ["runpod.serverless modules (line 4)"]
    upward = ast.parse(
        "from tpworker.serving import worker\nfrom tpworker import errors\nimport tpworker.startup.plan\n"
    )
    assert layer_breaches(PACKAGE / "planning" / "x.py", upward) == [
        "imports tpworker.serving (line 1)",
        "imports tpworker.startup (line 3)",
    ]
