"""Logging is configured once per process by every entry point, with secret values redacted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

SECRET = "hf_not-a-real-token-1234567890"

# Each entry point's start, then a library that logs the secret (what redaction is the last defence for).
# handler.py's start is refused (a bad variable) before anything loads.
ENTRY_POINTS = {
    "tpworker plan": ("from tpworker import cli\ncli.main(['plan', CONFIG])", {}),
    "tpworker download (refused)": (
        "from tpworker import cli\ncli.main(['download', '/nowhere/model', '--dest', TMP])",
        {},
    ),
    "handler.py (refused at start)": (
        "from tpworker import app\napp.main(lambda job: None, 'handler.py')",
        {"MAX_CONCURRENCY": "many"},
    ),
}


@pytest.mark.slow  # a Python process per entry point
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_redacts_secrets_in_its_logs(entry, tmp_path):
    code = (
        f"import logging\nCONFIG = {str(ROOT / 'tests/fixtures/configs/llama-3-8b-instruct.json')!r}\n"
        f"TMP = {str(tmp_path)!r}\n"
        + ENTRY_POINTS[entry][0]
        + "\nlogging.getLogger('some.library').warning('request with token %s', "
        + repr(SECRET)
        + ")\nlogging.getLogger('some.library').warning('configured once: %d handler(s)', "
        "len(logging.getLogger().handlers))\n"
    )
    env = {**os.environ, "HF_TOKEN": SECRET, "TPWORKER_CACHE_DIR": str(tmp_path), **ENTRY_POINTS[entry][1]}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert "request with token ***" in output, output[-2000:]
    assert SECRET not in output
    assert "configured once: 1 handler(s)" in output
