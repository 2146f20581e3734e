"""The code's style is checked, not only written down: ruff's lint rules and formatting, and mypy in strict mode
on src/tpworker (pyproject.toml), each `# type: ignore` with its error code and its reason."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

RUFF = [sys.executable, "-m", "ruff"]


def ruff(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*RUFF, *args, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    done = ruff("check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, "run `ruff format .`: " + done.stdout + done.stderr


def mypy(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_mypy_strict_finds_nothing():
    done = mypy()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr


def test_mypy_would_catch_a_mistake(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.mypy]\nstrict = true\n")
    (tmp_path / "bad.py").write_text("def f(x):\n    return x\n\n\ndef g(x: int) -> str:\n    return x\n")
    done = mypy("--no-incremental", "bad.py", cwd=tmp_path)
    assert done.returncode != 0 and "[no-untyped-def]" in done.stdout and "[return-value]" in done.stdout, done.stdout


def test_each_type_ignore_names_its_error_and_its_reason():
    unexplained = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src").rglob("*.py")) + [ROOT / "handler.py"]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and not re.search(r"# type: ignore\[[a-z-]+(, [a-z-]+)*\]  # \S", line)
    ]
    assert unexplained == []


def test_ruff_would_catch_a_mistake(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\nimport sys\n\n\ndef f(l):\n    return l\n")
    done = ruff("check", "--output-format", "concise", ".", cwd=tmp_path)
    assert done.returncode != 0 and "F401" in done.stdout and "E741" in done.stdout, done.stdout
