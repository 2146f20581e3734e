"""`python handler.py` as a user runs it: the real worker in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ENGINE_ENV, ROOT

CHAT_JOB = {
    "input": {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": True,
        "sampling_params": {"temperature": 0, "max_tokens": 24},
    }
}


def run_handler(*args: str, cwd=ROOT, handler=ROOT / "handler.py", timeout: float = 240, **env: str):
    """(exit status, everything printed, seconds taken)"""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(handler), *args],
        cwd=cwd,
        env={**os.environ, **ENGINE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


@pytest.mark.engine
def test_streamed_chat_at_tp2_prints_chunks_and_paris_and_exits_0(models):
    code, output, _ = run_handler("--test_input", json.dumps(CHAT_JOB), TENSOR_PARALLEL_SIZE="2")
    assert code == 0, output[-3000:]
    chunks = [line for line in output.splitlines() if line.startswith("--- chunk ")]
    assert len(chunks) > 1
    assert "--- text of choice 0: " in output and "Paris" in output.split("--- text of choice 0: ")[1]
    assert "TP=2 x PP=1" in output and "VLLM_CPU_OMP_THREADS_BIND=0|1" in output
    assert "No GPU: running in float32" in output  # DTYPE unset: the answer holds on every CPU
    # the start's estimate from the read speed measured on the weights, then its real duration, against the limit
    assert "Start estimate: about" in output and "GB/s (measured reading " in output
    assert "within RunPod's init timeout of 7.0 min (RUNPOD_INIT_TIMEOUT=420, RunPod's default)" in output
    assert "since the process began, of the 420 s RUNPOD_INIT_TIMEOUT allows; estimated" in output
    assert_start_timeline(output)


# The phases of a start in the order they end: the worker's own marks and vLLM's start records.
START_PHASES = [
    "settings read",
    "parallel plan checked",
    "model resolved",
    "vLLM imported",
    "engine arguments checked",
    "engine configured",
    "engine core up",
    "ranks up",
    "weights loaded",
    "KV cache sized",
    "engine core ready (profiled, warmed up)",
    "engine ready",
    "worker built",
    "first job taken",
    "first output sent",
]


def assert_start_timeline(output: str) -> None:
    """The summary line after a local job's first output (no job loop there, so no warm-up): every phase in
    order, durations that add up to the end, and vLLM's figures as vLLM itself logged them."""
    line = next(x for x in output.splitlines() if "Start-up timeline to the first job's first output: " in x)
    text, _, last = line.split("Start-up timeline to the first job's first output: ")[1].rpartition("; ")
    parts = [re.fullmatch(r"(.*?) (\d+\.\d+) s(?: \((.*)\))?", part) for part in text.split("; ")]
    assert all(parts), line
    assert [p[1] for p in parts] == START_PHASES, line
    ended = float(re.fullmatch(r"first output sent at (\d+\.\d+) s since the process began\.", last)[1])
    assert abs(sum(float(p[2]) for p in parts) - ended) < 0.1, line
    details = {p[1]: p[3] for p in parts}
    assert details["ranks up"] == "2 rank(s) loading"
    checkpoint = float(re.search(r"Checkpoint size: ([\d.]+) GiB", output)[1])  # vLLM's own line
    assert details["weights loaded"].startswith(f"{checkpoint / 2:.2f} GiB per rank in "), line
    assert details["KV cache sized"] == re.search(r"KV cache size: ([\d,]+) tokens", output)[1] + " tokens"


@pytest.mark.slow
def test_a_bad_job_prints_an_error_naming_the_field_and_exits_1():
    code, output, _ = run_handler("--test_input", '{"input": {"prompt": 5}}')
    assert code == 1
    error = json.loads(output.split("--- job failed: ")[1].splitlines()[0])
    assert error["param"] == "prompt" and "prompt" in error["message"]


@pytest.fixture
def lone_handler(tmp_path):
    """handler.py copied into an empty folder (the repository's own test_input.json not beside it)."""
    (tmp_path / "handler.py").write_text((ROOT / "handler.py").read_text())
    return tmp_path / "handler.py"


@pytest.mark.slow
def test_test_input_json_is_found_without_flags(lone_handler):
    (lone_handler.parent / "test_input.json").write_text(json.dumps({"input": {"messages": "not a list"}}))
    code, output, _ = run_handler(cwd=lone_handler.parent, handler=lone_handler)
    assert code == 1 and '"param": "messages"' in output


@pytest.mark.slow
def test_nothing_to_run_is_explained(lone_handler):
    code, output, _ = run_handler(cwd=lone_handler.parent, handler=lone_handler, RUNPOD_WEBHOOK_GET_JOB="")
    assert code == 2 and "Nothing to run" in output
    code, output, _ = run_handler("--test_input", "{not json")
    assert code == 2 and "--test_input is not valid JSON" in output


@pytest.mark.slow
def test_bad_variables_stop_the_worker_at_start_naming_them():
    code, output, _ = run_handler("--test_input", json.dumps(CHAT_JOB), TENSOR_PARALLEL_SIZE="two")
    assert code == 2 and "TENSOR_PARALLEL_SIZE='two' is not valid" in output
    code, output, _ = run_handler("--test_input", json.dumps(CHAT_JOB), GPU_MEMORY_UTILIZATION="1.5")
    assert code == 2 and "GPU_MEMORY_UTILIZATION='1.5' is not valid" in output and "<= 1" in output


@pytest.mark.slow
def test_a_tp_size_that_cannot_split_the_model_is_refused_within_seconds(models):
    code, output, seconds = run_handler("--test_input", json.dumps(CHAT_JOB), TENSOR_PARALLEL_SIZE="3")
    assert code == 2
    assert "TENSOR_PARALLEL_SIZE=3 cannot split this model" in output and "1, 2, 4, 12" in output
    assert seconds < 5, seconds
    assert "Initializing a V1 LLM engine" not in output


# A user's script that imports handler.py. vLLM starts its engine processes with spawn, which re-imports
# the main script: its top level must be guarded, as any multiprocessing script's.
IMPORTED = """
import asyncio, json, sys
sys.path.insert(0, {root!r})
import handler  # imported, not run: RunPod's local tools and users' tests do this


async def main():
    return [chunk async for chunk in handler.handler({{"id": "imported", "input": json.loads(sys.argv[1])}})]


if __name__ == "__main__":
    print("--- chunks: " + json.dumps(asyncio.run(main())), flush=True)
"""


def run_imported(tmp_path, job_input: dict, **env: str) -> list:
    script = tmp_path / "use_handler.py"
    script.write_text(IMPORTED.format(root=str(ROOT)))
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(job_input)],
        cwd=tmp_path,
        env={**os.environ, **ENGINE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert "--- chunks: " in output, output[-3000:]
    return json.loads(output.split("--- chunks: ")[1].splitlines()[0])


@pytest.mark.engine
def test_an_imported_handler_starts_the_worker_on_first_use(models, tmp_path):
    chunks = run_imported(tmp_path, {**CHAT_JOB["input"], "stream": False}, TENSOR_PARALLEL_SIZE="1")
    assert "Paris" in "".join(chunks[0]["choices"][0]["tokens"]), chunks


@pytest.mark.slow
def test_an_imported_handler_that_cannot_start_says_why_in_the_jobs_error(tmp_path):
    (chunk,) = run_imported(tmp_path, CHAT_JOB["input"], MAX_CONCURRENCY="many")
    assert chunk["error"]["code"] == 503 and "MAX_CONCURRENCY='many' is not valid" in chunk["error"]["message"]
