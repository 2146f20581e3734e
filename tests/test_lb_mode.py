"""The worker over direct HTTP (a RunPod load-balancing endpoint): `python handler.py` with PORT set and no
RunPod queue variables, as RunPod runs it. /ping is answered from the moment the port is bound (204 while the
worker starts, 200 when it serves); vLLM's routes through the official OpenAI and Anthropic clients; the native
job route, whole and streamed; the API key; 429 beyond MAX_CONCURRENCY; SIGTERM's drain; and a refused start
answered over HTTP. One real engine (the default model, float32 on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ENGINE_ENV, free_port, run_handler

KEY = "lb-test-key"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


class HttpWorker:
    """`python handler.py` serving HTTP; `pings` holds every /ping status seen from its start."""

    def __init__(self, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, **ENGINE_ENV, "PORT": str(self.port), **env}
        environ.pop("RUNPOD_WEBHOOK_GET_JOB", None)
        self.log = log
        self.process = run_handler(log, environ)
        self.pings: list[int] = []

    def ping(self) -> httpx.Response:
        return httpx.get(f"{self.url}/ping", timeout=5)

    def wait_for(self, status: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                self.pings.append(self.ping().status_code)
                if self.pings[-1] == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"/ping never answered {status}: {self.pings[-5:]} {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    running = HttpWorker(tmp_path_factory.mktemp("lb") / "worker.log", API_KEY=KEY, MAX_CONCURRENCY="2")
    running.wait_for(200)
    yield running
    running.stop()


def model_name(worker: HttpWorker) -> str:
    return httpx.get(f"{worker.url}/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"]


@pytest.mark.engine
def test_ping_answers_204_while_the_worker_starts_then_200(worker):
    seen = [status for i, status in enumerate(worker.pings) if i == 0 or status != worker.pings[i - 1]]
    assert seen == [204, 200], worker.pings


@pytest.mark.engine
def test_the_openai_and_anthropic_clients_are_answered_by_vllms_routes(worker):
    import anthropic
    import openai

    model = model_name(worker)
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=KEY)
    chat = client.chat.completions.create(model=model, messages=FRANCE, max_tokens=12, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    streamed = client.chat.completions.create(model=model, messages=FRANCE, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == chat.choices[0].message.content
    claude = anthropic.Anthropic(base_url=worker.url, api_key=KEY)
    # greedy; this SDK has no temperature argument any more, vLLM's Messages API still reads it
    message = claude.messages.create(model=model, messages=FRANCE, max_tokens=12, extra_body={"temperature": 0})
    assert "Paris" in message.content[0].text


@pytest.mark.engine
def test_native_jobs_whole_and_streamed(worker):
    job = {"messages": FRANCE, "sampling_params": {"max_tokens": 12, "temperature": 0}}
    whole = httpx.post(f"{worker.url}/job", json=job, headers=AUTH, timeout=60)
    assert whole.status_code == 200
    text = "".join(t for chunk in whole.json()["output"] for t in chunk["choices"][0]["tokens"])
    assert "Paris" in text
    with httpx.stream("POST", f"{worker.url}/job", json={**job, "stream": True}, headers=AUTH, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2
    assert "".join(t for e in events[:-1] for t in json.loads(e)["choices"][0]["tokens"]) == text
    bad = httpx.post(f"{worker.url}/job", json={"prompt": 5}, headers=AUTH, timeout=60)
    assert bad.status_code == 400 and bad.json()["output"][0]["error"]["param"] == "prompt"


@pytest.mark.engine
def test_the_api_key_is_asked_for_everything_but_ping(worker):
    assert httpx.get(f"{worker.url}/v1/models", timeout=10).status_code == 401
    wrong = httpx.get(f"{worker.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "API_KEY" in wrong.json()["error"]["message"]
    assert worker.ping().status_code == 200


@pytest.mark.engine
def test_beyond_max_concurrency_the_worker_answers_429_with_retry_after(worker):
    job = {"prompt": "Count: 1, 2, 3,", "sampling_params": {"max_tokens": 300, "ignore_eos": True}}
    answers: list[httpx.Response] = []

    def send() -> None:
        answers.append(httpx.post(f"{worker.url}/job", json=job, headers=AUTH, timeout=300))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 2 and 429 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "MAX_CONCURRENCY" in refused.json()["error"]["message"]


@pytest.mark.engine
def test_sigterm_stops_ping_finishes_what_runs_and_exits_0(worker):
    """Last: it stops the module's worker."""
    # long enough to still run when /ping is asked, half a second after the SIGTERM, on a fast CPU
    job = {"prompt": "Count: 1, 2, 3,", "sampling_params": {"max_tokens": 400, "ignore_eos": True}, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{worker.url}/job", json=job, headers=AUTH, timeout=120) as stream:
        lines = stream.iter_lines()
        events.append(next(line for line in lines if line.startswith("data: ")))
        worker.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.ping().status_code == 503
        assert httpx.get(f"{worker.url}/v1/models", headers=AUTH, timeout=10).status_code == 503
        events += [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)
    assert worker.process.wait(60) == 0


@pytest.mark.slow
def test_a_refused_start_is_answered_over_http(tmp_path):
    refused = HttpWorker(tmp_path / "refused.log", TENSOR_PARALLEL_SIZE="5")
    try:
        refused.wait_for(503, timeout=120)
        for answer in (refused.ping(), httpx.post(f"{refused.url}/v1/chat/completions", json={}, timeout=10)):
            assert answer.status_code == 503
            assert "TENSOR_PARALLEL_SIZE=5" in answer.json()["error"]["message"]
    finally:
        assert refused.stop() == 0
