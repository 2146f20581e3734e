"""`tpworker dev` with real clients: the official OpenAI client, plain HTTP on RunPod's endpoint
API, and RunPod's own client SDK, against the real worker on RunPod's production job loop.

One dev endpoint (MAX_CONCURRENCY=8, float32 so that batched and single runs agree) serves the
module; RunPod's cloud is the only stand-in (tpworker dev plays its part)."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from conftest import DevEndpoint

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def dev(models, tmp_path_factory):
    # DTYPE unset, as a user runs it: float32 with no GPU (what vLLM's own server is compared with below)
    endpoint = DevEndpoint(tmp_path_factory.mktemp("dev") / "dev.log", MAX_CONCURRENCY="8")
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def client(dev):
    return openai.OpenAI(base_url=f"{dev.url}/openai/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_completion(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=24)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens == 37


def test_chat_completion_streams_as_sse(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and "Paris" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_with_n_2_seed_and_stop(client):
    reply = client.completions.create(
        model=MODEL, prompt="My favourite fruit is", n=2, temperature=1.0, seed=7, max_tokens=12
    )
    again = client.completions.create(
        model=MODEL, prompt="My favourite fruit is", n=2, temperature=1.0, seed=7, max_tokens=12
    )
    assert len(reply.choices) == 2
    assert [c.text for c in reply.choices] == [c.text for c in again.choices]
    free = (
        client.completions.create(model=MODEL, prompt="One, two, three,", temperature=0, max_tokens=12).choices[0].text
    )
    stop = free.strip().split()[1]
    stopped = client.completions.create(
        model=MODEL, prompt="One, two, three,", temperature=0, max_tokens=12, stop=[stop]
    )
    assert stopped.choices[0].text == free[: free.index(stop)] and stopped.choices[0].finish_reason == "stop"


def test_logprobs(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(len(token.top_logprobs) == 3 for token in content)


def test_structured_output_follows_the_json_schema(client):
    # bounded fields: a 135M model would happily write digits forever
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "is_capital": {"type": "boolean"},
        },
        "required": ["city", "country", "is_capital"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"city", "country", "is_capital"}
    assert isinstance(data["city"], str) and isinstance(data["is_capital"], bool)


def test_an_invalid_request_is_an_openai_error_with_status_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=-1)
    assert caught.value.status_code == 400
    assert "temperature" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=FRANCE)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages="not a list")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "messages"
    # and the worker keeps serving
    assert client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=16).choices


def test_responses_api(client):
    reply = client.responses.create(
        model=MODEL, input="What is the capital of France?", temperature=0, max_output_tokens=24
    )
    assert "Paris" in reply.output_text


def test_run_then_stream_gives_chunks_before_the_job_ends(dev):
    job = httpx.post(
        f"{dev.url}/run",
        json={
            "input": {
                "prompt": "Once upon a time",
                "stream": True,
                "sampling_params": {"max_tokens": 300, "ignore_eos": True},
            }
        },
    ).json()
    assert job["status"] == "IN_QUEUE"
    first = httpx.get(f"{dev.url}/stream/{job['id']}", timeout=15).json()
    assert first["status"] == "IN_PROGRESS" and first["stream"], first
    chunks = [c["output"] for c in first["stream"]]
    while True:
        part = httpx.get(f"{dev.url}/stream/{job['id']}", timeout=15).json()
        chunks += [c["output"] for c in part["stream"]]
        if part["status"] == "COMPLETED" and not part["stream"]:
            break
    status = httpx.get(f"{dev.url}/status/{job['id']}").json()
    assert status["status"] == "COMPLETED" and status["output"] == chunks  # return_aggregate_stream
    assert chunks[-1]["usage"]["output"] == 300


def test_runsync_and_status(dev):
    done = httpx.post(
        f"{dev.url}/runsync", json={"input": {"messages": FRANCE, "sampling_params": {"temperature": 0}}}, timeout=120
    ).json()
    assert done["status"] == "COMPLETED"
    assert "Paris" in "".join(done["output"][0]["choices"][0]["tokens"])
    assert httpx.get(f"{dev.url}/status/{done['id']}").json()["status"] == "COMPLETED"
    failed = httpx.post(f"{dev.url}/runsync", json={"input": {"prompt": 5}}, timeout=120).json()
    assert failed["status"] == "FAILED" and "prompt" in failed["error"]
    assert httpx.get(f"{dev.url}/status/nope").status_code == 404


def test_runpods_own_client_sdk(dev, monkeypatch):
    import runpod

    monkeypatch.setattr(runpod.endpoint.runner, "endpoint_url_base", f"{dev.url}/v2", raising=False)
    endpoint = runpod.Endpoint("dev", api_key="unused")
    endpoint.rp_client.endpoint_url_base = f"{dev.url}/v2"
    chunks = list(
        endpoint.run(
            {
                "prompt": "One, two,",
                "stream": True,
                "sampling_params": {"temperature": 0, "max_tokens": 20, "ignore_eos": True},
            }
        ).stream()
    )
    assert sum(len(c["choices"][0]["tokens"]) for c in chunks) > 0 and chunks[-1]["usage"]["output"] == 20
    assert endpoint.run_sync({"prompt": "Hi", "sampling_params": {"max_tokens": 4}})[0]["usage"]["output"] == 4


def test_16_concurrent_streamed_jobs_with_max_concurrency_8_all_complete_and_match(dev):
    prompts = [f"Here is fact number {i} about the ocean:" for i in range(16)]
    params = {"temperature": 0, "max_tokens": 16, "ignore_eos": True}
    expected = {}
    for p in prompts:  # each alone first: the reference
        out = httpx.post(
            f"{dev.url}/runsync", json={"input": {"prompt": p, "sampling_params": params}}, timeout=120
        ).json()
        expected[p] = "".join(out["output"][0]["choices"][0]["tokens"])
    results, errors = {}, []

    def stream_one(prompt):
        try:
            job = httpx.post(
                f"{dev.url}/run", json={"input": {"prompt": prompt, "stream": True, "sampling_params": params}}
            ).json()
            chunks, status = [], "IN_QUEUE"
            while status not in ("COMPLETED", "FAILED"):
                part = httpx.get(f"{dev.url}/stream/{job['id']}", timeout=30).json()
                chunks += [c["output"] for c in part["stream"]]
                status = part["status"]
            results[prompt] = (status, chunks)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=stream_one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == 16
    for prompt, (status, chunks) in results.items():
        assert status == "COMPLETED"
        assert chunks[-1]["usage"]["output"] == 16 and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(t for c in chunks for t in c["choices"][0]["tokens"]) == expected[prompt]


def test_health_counts_jobs(dev):
    before = httpx.get(f"{dev.url}/health").json()["jobs"]
    assert dev.wait_status(dev.run({"prompt": "Hi", "sampling_params": {"max_tokens": 2}}))["status"] == "COMPLETED"
    assert dev.wait_status(dev.run({"prompt": 5}))["status"] == "FAILED"
    health = httpx.get(f"{dev.url}/health").json()
    assert health["workers"]["idle"] + health["workers"]["running"] == 1
    assert health["jobs"]["completed"] == before["completed"] + 1
    assert health["jobs"]["failed"] == before["failed"] + 1
