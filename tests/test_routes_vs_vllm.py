"""Every route the worker serves for a generative model, compared with vLLM's own server.

The same requests go to `vllm serve` and to `tpworker dev` (the same model, float32, the same
engine settings): through the gateway's /openai/<route> (the job form {"openai_route",
"openai_input"}), through the route form {"route", "body", "method"} with RunPod's own client SDK,
and through the official `anthropic` and `openai` clients. Answers must be equal once ids and
timestamps are set aside; errors must carry the same status and message. RunPod's cloud is the
only stand-in (tpworker dev plays its part)."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from conftest import DevEndpoint, VllmServer

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
RANDOM_FIELDS = frozenset({"id", "created", "created_at"})  # differ between any two answers


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    endpoint = DevEndpoint(tmp_path_factory.mktemp("dev") / "dev.log", MAX_CONCURRENCY="4")
    yield endpoint
    endpoint.close()


def test_the_workers_own_log_lines_go_on_once_vllms_server_is_built(dev):
    """vLLM's build_app sets the root logger to ERROR (its SageMaker bootstrap); the worker puts it back."""
    assert httpx.get(f"{dev.url}/openai/v1/models", timeout=60).status_code == 200  # the app is built by now
    refused = dev.wait_status(dev.run({"prompt": 5}))
    assert refused["status"] == "FAILED"
    for _ in range(50):
        if "refused: prompt" in dev.log():
            break
        time.sleep(0.1)
    assert "refused: prompt" in dev.log()  # an INFO line of the worker's, logged after the build


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    server = VllmServer(models[1], tmp_path_factory.mktemp("vllm") / "vllm.log", MODEL)
    yield server
    server.close()


def settled(value):
    """An answer with the fields that differ between two runs of one request set aside."""
    if isinstance(value, dict):
        return {k: None if k in RANDOM_FIELDS else settled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [settled(v) for v in value]
    return value


def sse_events(text: str) -> list:
    """An SSE stream as a list of (event name, settled data) pairs."""
    events = []
    for block in filter(None, text.split("\n\n")):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                payload = line[len("data: ") :]
                data = payload if payload == "[DONE]" else settled(json.loads(payload))
        events.append((name, data))
    return events


def error_of(body: dict) -> tuple[str, str | None]:
    error = body["error"]
    return error["message"], error.get("type")


# (name, method, route, body): success and error cases of each route, greedy so that answers are exact.
REQUESTS = [
    ("tokenize a prompt", "POST", "/tokenize", {"model": MODEL, "prompt": "Hello world, how are you?"}),
    (
        "tokenize chat messages",
        "POST",
        "/tokenize",
        {"model": MODEL, "messages": FRANCE, "add_generation_prompt": True},
    ),
    ("tokenize: prompt is a number", "POST", "/tokenize", {"model": MODEL, "prompt": 5}),
    ("detokenize", "POST", "/detokenize", {"model": MODEL, "tokens": [504, 3575, 282, 4649, 314, 7042, 30]}),
    ("detokenize: unknown model", "POST", "/detokenize", {"model": "gpt-7", "tokens": [1]}),
    ("messages", "POST", "/v1/messages", {"model": MODEL, "max_tokens": 16, "temperature": 0, "messages": FRANCE}),
    (
        "messages with a system prompt",
        "POST",
        "/v1/messages",
        {"model": MODEL, "max_tokens": 12, "temperature": 0, "system": "Answer in French.", "messages": FRANCE},
    ),
    (
        "messages streamed",
        "POST",
        "/v1/messages",
        {"model": MODEL, "max_tokens": 16, "temperature": 0, "messages": FRANCE, "stream": True},
    ),
    ("messages: max_tokens missing", "POST", "/v1/messages", {"model": MODEL, "messages": FRANCE}),
    ("messages: unknown model", "POST", "/v1/messages", {"model": "claude-9", "max_tokens": 4, "messages": FRANCE}),
    ("count tokens", "POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": FRANCE}),
    ("embeddings on a generative model", "POST", "/v1/embeddings", {"model": MODEL, "input": "Hi"}),
    ("models", "GET", "/v1/models", None),
    (
        "chat completion streamed",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": FRANCE, "max_tokens": 12, "temperature": 0, "stream": True},
    ),
]


@pytest.mark.parametrize("name,method,route,body", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_the_gateway_route_answers_as_vllms_server(dev, reference, name, method, route, body):
    theirs = httpx.request(method, reference.url + route, json=body, timeout=120)
    ours = httpx.request(method, f"{dev.url}/openai{route}", json=body, timeout=120)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    if theirs.headers["content-type"].startswith("text/event-stream"):
        assert sse_events(ours.text) == sse_events(theirs.text)
        assert len(sse_events(theirs.text)) > 5
    elif theirs.status_code == 200:
        assert settled(ours.json()) == settled(theirs.json())
    elif theirs.status_code == 404 and theirs.json() == {"detail": "Not Found"}:  # vLLM has no such route here
        assert "not served for this model" in ours.text and "pooling" in ours.text
    else:
        assert error_of(ours.json())[0] == error_of(theirs.json())[0]


def test_the_route_form_through_runpods_client_sdk(dev, reference, monkeypatch):
    """{"route", "body", "method"}, as worker-vllm's current release takes it, sent with runpod.Endpoint."""
    endpoint = sdk_endpoint(dev, monkeypatch)
    body = {"model": MODEL, "prompt": "Hello world, how are you?"}
    tokens = endpoint.run_sync({"route": "/tokenize", "body": body, "method": "POST"}, timeout=120)
    assert tokens == [httpx.post(f"{reference.url}/tokenize", json=body).json()]
    models = endpoint.run_sync({"route": "/v1/models", "method": "GET"}, timeout=120)
    assert [m["id"] for m in models[0]["data"]] == [MODEL]
    gateway_list = endpoint.run_sync({"openai_route": "/v1/models"}, timeout=120)  # no body, as the gateway sends
    assert settled(gateway_list) == settled(models)
    streamed = next(body for name, _, _, body in REQUESTS if name == "messages streamed")
    text = "".join(endpoint.run({"route": "/v1/messages", "body": streamed}).stream())
    assert sse_events(text) == sse_events(httpx.post(f"{reference.url}/v1/messages", json=streamed, timeout=120).text)


def test_the_anthropic_client_streamed_and_not(dev, reference):
    ours = anthropic.Anthropic(base_url=f"{dev.url}/openai", api_key="unused", max_retries=0, timeout=120)
    theirs = anthropic.Anthropic(base_url=reference.url, api_key="unused", max_retries=0, timeout=120)
    # greedy; this SDK has no temperature argument any more, vLLM's Messages API still reads it
    request = dict(model=MODEL, max_tokens=24, messages=FRANCE, extra_body={"temperature": 0})
    answer = ours.messages.create(**request)
    assert answer.content[0].text == theirs.messages.create(**request).content[0].text
    assert "Paris" in answer.content[0].text and answer.stop_reason in ("end_turn", "max_tokens")
    with ours.messages.stream(**request) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == answer.content[0].text and final.usage.output_tokens == answer.usage.output_tokens
    counted = ours.messages.count_tokens(model=MODEL, messages=FRANCE)
    assert counted.input_tokens == answer.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        ours.messages.create(**{**request, "model": "claude-9"})


def test_a_sampled_chat_completion_matches_vllms_server(dev, reference):
    """The same request with the same seed through the openai client (sampling, not greedy)."""
    request = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        temperature=0.9,
        seed=1234,
        max_tokens=32,
    )
    ours = openai.OpenAI(base_url=f"{dev.url}/openai/v1", api_key="unused", max_retries=0, timeout=120)
    theirs = openai.OpenAI(base_url=f"{reference.url}/v1", api_key="unused", max_retries=0, timeout=120)
    mine = ours.chat.completions.create(**request).choices[0].message.content
    assert mine == theirs.chat.completions.create(**request).choices[0].message.content and len(mine) > 20


@pytest.fixture(scope="module")
def openai_shaped(tmp_path_factory):
    """A second endpoint whose native jobs answer in worker-vllm's current shape, on runpod's own JobScaler
    (JOB_LOOP=sdk) rather than the worker's."""
    endpoint = DevEndpoint(
        tmp_path_factory.mktemp("dev-openai") / "dev.log", NATIVE_OUTPUT_FORMAT="openai", JOB_LOOP="sdk"
    )
    yield endpoint
    endpoint.close()


def sdk_endpoint(dev, monkeypatch):
    import runpod

    monkeypatch.setattr(runpod.endpoint.runner, "endpoint_url_base", f"{dev.url}/v2", raising=False)
    endpoint = runpod.Endpoint("dev", api_key="unused")
    endpoint.rp_client.endpoint_url_base = f"{dev.url}/v2"
    return endpoint


def test_native_jobs_in_both_output_shapes_through_runpods_client_sdk(dev, openai_shaped, reference, monkeypatch):
    """NATIVE_OUTPUT_FORMAT: tokens (the default) and openai (worker-vllm's current release: the
    OpenAI object, or its SSE text when streamed), each for the same job."""
    params = {"max_tokens": 12, "temperature": 0}
    chat = {"messages": FRANCE, "sampling_params": params}
    tokens_shape = sdk_endpoint(dev, monkeypatch).run_sync(chat, timeout=120)
    assert "Paris" in "".join(tokens_shape[0]["choices"][0]["tokens"]) and tokens_shape[0]["usage"]["output"] <= 12

    endpoint = sdk_endpoint(openai_shaped, monkeypatch)
    expected = httpx.post(f"{reference.url}/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, **params})
    assert settled(endpoint.run_sync(chat, timeout=120)) == [settled(expected.json())]
    streamed = "".join(endpoint.run({**chat, "stream": True}).stream())
    expected = httpx.post(
        f"{reference.url}/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, "stream": True, **params}
    )
    assert sse_events(streamed) == sse_events(expected.text) and "[DONE]" in streamed
    completion = endpoint.run_sync({"prompt": "The capital of France is", "sampling_params": params}, timeout=120)
    expected = httpx.post(
        f"{reference.url}/v1/completions", json={"model": MODEL, "prompt": "The capital of France is", **params}
    )
    assert settled(completion) == [settled(expected.json())]
    refused = openai_shaped.wait_status(openai_shaped.run({"messages": [{"role": "tool", "content": "x"}]}))
    assert refused["status"] == "FAILED" and "tool_call_id" in refused["error"]  # the tokens shape's checks


def test_runpods_own_job_loop_runs_the_warm_up_with_the_first_job(openai_shaped):
    """JOB_LOOP=sdk: the SDK's JobScaler, not the worker's, took the jobs above; the first of them began the
    warm-up and waited for it (the state machine went to serving before any job's output)."""
    log = openai_shaped.log()
    assert "JOB_LOOP=sdk: runpod's own JobScaler takes the jobs" in log
    warming, serving = log.find("Worker state: starting -> warming up"), log.find("Worker state: warming up -> serving")
    assert 0 <= warming < serving < log.find("Start-up timeline to the first job's first output"), log[-3000:]
