"""The code's style is checked, not only written down: ruff's lint rules and formatting (pyproject.toml)."""

from __future__ import annotations

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


def test_ruff_would_catch_a_mistake(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\nimport sys\n\n\ndef f(l):\n    return l\n")
    done = ruff("check", "--output-format", "concise", ".", cwd=tmp_path)
    assert done.returncode != 0 and "F401" in done.stdout and "E741" in done.stdout, done.stdout
