"""What the image does, without Docker: `tpworker download` bakes the default model from a local hub
(tests/hubserver.py, the hub's HTTP protocol), then the worker starts from that folder offline and
answers jobs, the Hub's release tests (.runpod/tests.json) included. Real CPU engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ENGINE_ENV, ROOT, RunningWorker, text_of
from hubserver import FakeHub

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT_JOB = {
    "input": {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "sampling_params": {"temperature": 0, "max_tokens": 24},
    }
}


@pytest.fixture(scope="module")
def baked(models, tmp_path_factory):
    """The default model downloaded by `tpworker download` from a local hub: (hub, manifest file)."""
    models_dir = tmp_path_factory.mktemp("image") / "models"
    with FakeHub() as hub:
        hub.add_repo(REPO, models[1])
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(models_dir.parent / "hf-home")}
        done = subprocess.run(
            [sys.executable, "-m", "tpworker", "download", REPO, "--dest", str(models_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Valid TP sizes for this model: 1, 2, 4, 12" in done.stdout
        yield hub, models_dir / "tpworker-manifest.json"


def worker_env(hub: FakeHub, manifest_file) -> dict[str, str]:
    """As in the image: MODEL_MANIFEST set, MODEL_NAME not, the hub reachable (it must not be asked)."""
    return {
        "MODEL_MANIFEST": str(manifest_file),
        "MODEL_NAME": "",
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "",
        "BASE_PATH": str(manifest_file.parent.parent / "no-volume"),
        "TENSOR_PARALLEL_SIZE": "1",
    }


@pytest.mark.engine
def test_the_worker_starts_from_the_downloaded_folder_offline_and_answers(baked):
    hub, manifest_file = baked
    asked_before = len(hub.requests)
    done = subprocess.run(
        [sys.executable, str(ROOT / "handler.py"), "--test_input", json.dumps(CHAT_JOB)],
        cwd=ROOT,
        env={**os.environ, **ENGINE_ENV, **worker_env(hub, manifest_file)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"Model: {REPO} at commit {hub.repos[REPO].commit[:12]} is baked into the image" in output
    assert "vLLM runs with HF_HUB_OFFLINE=1" in output
    assert "Paris" in output.split("--- text of choice 0: ")[1]
    assert len(hub.requests) == asked_before, [r.path for r in hub.requests[asked_before:]]


@pytest.mark.engine
def test_the_hubs_release_tests_pass_on_the_baked_model(baked):
    hub, manifest_file = baked
    tests = {t["name"]: t["input"] for t in json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]}
    # The Hub runs them on its model (Qwen2.5-0.5B-Instruct, TP=2 on 2 GPUs) and passes a test whose job
    # completes; here they run on the default model, whose answers are checked. The OpenAI job names the model.
    for name, field in (("openai_chat", "openai_input"), ("anthropic_messages", "body"), ("tokenize", "body")):
        tests[name][field]["model"] = REPO
    worker = RunningWorker(**worker_env(hub, manifest_file))
    try:
        answers = {name: worker.job(job_input, job_id=name) for name, job_input in tests.items()}
    finally:
        worker.close()
    for name, chunks in answers.items():
        assert chunks and not any("error" in chunk for chunk in chunks if isinstance(chunk, dict)), (name, chunks)
    assert text_of(answers["native_prompt"]).strip()
    streamed = answers["streamed_chat"]
    assert len(streamed) > 1 and "Paris" in text_of(streamed)
    assert "Paris" in answers["openai_chat"][0]["choices"][0]["message"]["content"]
    assert answers["openai_chat"][0]["model"] == REPO
    message = answers["anthropic_messages"][0]
    assert message["type"] == "message" and "Paris" in message["content"][0]["text"]
    tokens = answers["tokenize"][0]
    assert tokens["count"] == len(tokens["tokens"]) > 3
