"""A refused start does not loop: `python handler.py` on RunPod's job loop (behind `tpworker dev
--external-worker`, the SDK's production loop) whose start is refused for a reason a restart cannot fix stays
up and answers every job, native and OpenAI forms alike, with the cause and the fix; one a restart may fix
(the hub unreachable) exits non-zero, so that RunPod tries again; ON_REFUSED_START=exit and a local test run
exit with status 2. One case per failure class, each a real worker process; the hub is tests/hubserver.py.
The memory retry at start runs on the real engine at the end."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENGINE_ENV, ROOT, DevEndpoint, RunningWorker, free_port, run_handler, tallied
from hubserver import FakeHub

pytestmark = pytest.mark.slow

NATIVE = {"prompt": "Hi", "sampling_params": {"max_tokens": 2}}
OPENAI = {"openai_route": "/v1/chat/completions", "openai_input": {"messages": [{"role": "user", "content": "Hi"}]}}
CONFIG = ROOT / "tests" / "fixtures" / "configs" / "smollm2-135m-instruct.json"


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    endpoint = DevEndpoint(tmp_path_factory.mktemp("refused") / "dev.log", external_worker=True)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with FakeHub() as hub:
        for name, extra in (("model", {}), ("gated", {"gated": True}), ("huge", {})):
            folder = root / name
            folder.mkdir()
            (folder / "config.json").write_text(CONFIG.read_text())
            (folder / "model.safetensors").write_bytes(b"{}")
            sizes = {"model.safetensors": 10 * 1024**4} if name == "huge" else {}  # 10 TiB: no disk holds it
            hub.add_repo(f"org/{name}", folder, advertised_sizes=sizes, **extra)
        yield hub


class Worker:
    """`python handler.py` as RunPod starts it, pointed at the dev endpoint."""

    def __init__(self, dev: DevEndpoint, log: Path, **env: str):
        from tpworker.dev.server import worker_environment

        environ = {**os.environ, **ENGINE_ENV, **worker_environment(dev.url), **env}
        environ.pop("HF_TOKEN", None)
        self.log = log
        self.process = run_handler(log, environ)

    def exit_status(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        self.process.terminate()
        if self.exit_status(30) is None:
            self.process.kill()
            self.process.wait(10)


def hub_env(hub: FakeHub, tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),  # no token saved by `hf auth login`
        "BASE_PATH": str(tmp_path / "volume"),
        "MODEL_MANIFEST": str(tmp_path / "none.json"),
        **env,
    }


def refused_cases(hub: FakeHub, tmp_path: Path) -> list[tuple[str, dict, list[str]]]:
    """(failure class, the worker's variables, words every job's error must hold)."""
    return [
        ("a bad variable", {"MAX_N": "many"}, ["MAX_N='many' is not valid", "an integer"]),
        ("a plan that cannot split the model", {"TENSOR_PARALLEL_SIZE": "5"}, ["TENSOR_PARALLEL_SIZE=5", "1, 2, 4"]),
        (
            "a model that is not on the hub",
            hub_env(hub, tmp_path, MODEL_NAME="org/nothing"),
            ["MODEL_NAME='org/nothing' is not a model on the Hugging Face hub", "HF_TOKEN"],
        ),
        (
            "a gated model without a token",
            hub_env(hub, tmp_path, MODEL_NAME="org/gated"),
            ["org/gated' is a gated model and HF_TOKEN is not set", "Accept its terms"],
        ),
        (
            "a revision the model lacks",
            hub_env(hub, tmp_path, MODEL_NAME="org/model", MODEL_REVISION="v9"),
            ["MODEL_REVISION='v9' is not a branch, tag or commit"],
        ),
        (
            "a disk too small for the weights",
            hub_env(hub, tmp_path, MODEL_NAME="org/huge"),
            ["Not enough disk space", "larger"],
        ),
    ]


def test_each_refusal_a_restart_cannot_fix_keeps_the_worker_up_answering_every_job_with_it(dev, hub, tmp_path):
    for name, env, words in refused_cases(hub, tmp_path):
        with tallied("faults", f"refused start: {name}"):
            worker = Worker(dev, tmp_path / f"{name}.log", **env)
            try:
                answers = [dev.wait_status(dev.run(job), seconds=120) for job in (NATIVE, OPENAI, NATIVE)]
                log = worker.log.read_text()
                for answer in answers:
                    assert answer["status"] == "FAILED", (name, answer, log[-3000:])
                    assert "The worker cannot start" in answer["error"], (name, answer)
                    assert all(word in answer["error"] for word in words), (name, words, answer["error"])
                assert worker.exit_status(0.5) is None, (name, log[-3000:])  # still up: no restart loop
                assert "Traceback" not in log, (name, log[-3000:])
                assert "stays up and answers every job with this refusal" in log
            finally:
                worker.stop()


def test_a_refusal_a_restart_may_fix_exits_so_that_runpod_retries(dev, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the hub is unreachable
    with tallied("faults", "refused start: the hub unreachable (exits)"):
        env = {"HF_ENDPOINT": closed, "HF_HOME": str(tmp_path / "hf-home"), "MODEL_NAME": "org/model"}
        worker = Worker(dev, tmp_path / "unreachable.log", **env)
        status = worker.exit_status(60)
        log = worker.log.read_text()
        assert status == 2, log[-3000:]
        assert "A restart will try again" in log and "so that RunPod starts the worker again" in log


def test_on_refused_start_exit_keeps_the_old_behaviour(dev, tmp_path):
    worker = Worker(dev, tmp_path / "exit.log", MAX_N="many", ON_REFUSED_START="exit")
    assert worker.exit_status(60) == 2, worker.log.read_text()[-3000:]


def test_a_local_test_run_still_exits_2_at_once(tmp_path):
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "handler.py", "--test_input", '{"input": {"prompt": "Hi"}}'],
        cwd=ROOT,
        env={**os.environ, "MAX_N": "many", "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:9/job"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MAX_N='many' is not valid" in done.stdout + done.stderr
    assert time.monotonic() - began < 60


@pytest.mark.engine
def test_a_kv_cache_too_small_for_max_model_len_is_retried_with_what_it_holds(caplog):
    """vLLM's own refusal, reproduced on CPU: a 60 MiB KV cache cannot hold one 2048-token request."""
    caplog.set_level(logging.WARNING, "tpworker")
    with tallied("faults", "KV cache too small: retried with a lower MAX_MODEL_LEN"):
        running = RunningWorker(KV_CACHE_MEMORY_BYTES="60M")
        try:
            warning = next(r.getMessage() for r in caplog.records if "Starting once more" in r.getMessage())
            assert "To serve at least one request with the model's max seq len (2048)" in warning
            assert f"MAX_MODEL_LEN={running.engine.max_model_len}" in warning and "Set it so" in warning
            assert 0 < running.engine.max_model_len < 2048
            chunks = running.job({"prompt": "The capital of France is", "sampling_params": {"max_tokens": 4}})
            assert chunks[0]["usage"]["output"] == 4
        finally:
            running.close()


@pytest.mark.engine
def test_without_the_retry_the_kv_cache_refusal_names_the_setting_that_fits():
    from tpworker.serving.engine import EngineStartError

    with pytest.raises(EngineStartError) as refused:
        RunningWorker(KV_CACHE_MEMORY_BYTES="60M", START_MEMORY_RETRY="false")
    message = str(refused.value)
    assert "the estimated maximum model length is" in message and "Set MAX_MODEL_LEN=" in message
    assert not refused.value.retryable  # the worker would stay up on RunPod, answering jobs with this
