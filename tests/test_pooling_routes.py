"""The worker started as a pooling model (RUNNER=pooling, CONVERT=embed: the default model as an
embedding model), compared with `vllm serve` started the same way: the same vectors and scores for the
same inputs, and generation routes refused as vLLM refuses them. RunPod's cloud is the only stand-in
(tpworker dev plays its part).

Vectors are compared by a tolerance rule, everything else exactly. In float32 on the AMD EPYC the text
inputs' vectors came out bit-equal, but a token-id input's differed from vllm serve's in the 7th
significant digit, and a score by 1.0e-6 (each server alone answers the same input identically every
time), which is summation-order noise, not a different computation: the rule is a largest difference
of 1e-5 per component (the values are at most 1), and the same length and order of vectors."""

from __future__ import annotations

import httpx
import openai
import pytest
from test_routes_vs_vllm import MODEL, settled

from conftest import DevEndpoint, VllmServer

FLOAT_TOLERANCE = 1e-5  # float32 summation-order noise (see above), far below any real difference

pytestmark = pytest.mark.engine

POOLING = {"RUNNER": "pooling", "CONVERT": "embed"}


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    endpoint = DevEndpoint(tmp_path_factory.mktemp("dev") / "dev.log", **POOLING)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(models[1], log, MODEL, "--runner", "pooling", "--convert", "embed")
    yield server
    server.close()


REQUESTS = [
    ("embeddings", "/v1/embeddings", {"model": MODEL, "input": ["The capital of France is Paris.", "Hello"]}),
    ("embeddings of token ids", "/v1/embeddings", {"model": MODEL, "input": [[504, 3575, 282, 4649]]}),
    ("pooling", "/pooling", {"model": MODEL, "input": "The capital of France is Paris."}),
    ("score", "/score", {"model": MODEL, "text_1": "Paris", "text_2": ["France", "Japan"]}),
    ("tokenize", "/tokenize", {"model": MODEL, "prompt": "Hello world"}),
    ("embeddings: input missing", "/v1/embeddings", {"model": MODEL}),
    ("embeddings: unknown model", "/v1/embeddings", {"model": "text-embedding-9", "input": "Hi"}),
    (
        "chat on a pooling model",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    ),
]


def without_floats(value):
    if isinstance(value, dict):
        return {k: without_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_floats(v) for v in value]
    return "float" if isinstance(value, float) else value


def floats_of(value) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_of(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_of(v)]
    return [value] if isinstance(value, float) else []


def assert_same_answer(ours: dict, theirs: dict) -> None:
    """Equal in every field but the ids and times; floats within FLOAT_TOLERANCE of each other."""
    assert without_floats(settled(ours)) == without_floats(settled(theirs))
    mine, reference = floats_of(ours), floats_of(theirs)
    assert len(mine) == len(reference)
    assert max((abs(a - b) for a, b in zip(mine, reference, strict=True)), default=0.0) <= FLOAT_TOLERANCE


def assert_answers_as_vllm(dev, reference, route: str, body: dict, served_by: str) -> None:
    """The same request to the worker (through tpworker dev) and to vllm serve: the same status and answer;
    a route vLLM does not register for the model (its bare 404) named as served by `served_by`."""
    theirs = httpx.post(reference.url + route, json=body, timeout=120)
    ours = httpx.post(f"{dev.url}/openai{route}", json=body, timeout=120)
    assert ours.status_code == theirs.status_code, (ours.text, theirs.text)
    if theirs.status_code == 200:
        assert_same_answer(ours.json(), theirs.json())
    elif theirs.json() == {"detail": "Not Found"}:
        assert "not served for this model" in ours.text and served_by in ours.text, ours.text
    else:
        assert ours.json()["error"]["message"] == theirs.json()["error"]["message"]


@pytest.mark.parametrize("name,route,body", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_a_pooling_route_answers_as_vllms_server(dev, reference, name, route, body):
    assert_answers_as_vllm(dev, reference, route, body, served_by="a generative model")


def test_the_openai_client_and_the_route_form_get_the_same_vectors(dev, reference):
    client = openai.OpenAI(base_url=f"{dev.url}/openai/v1", api_key="unused", max_retries=0, timeout=120)
    vectors = client.embeddings.create(model=MODEL, input=["Paris", "London"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 576  # the model's hidden size
    body = {"model": MODEL, "input": ["Paris", "London"]}
    expected = httpx.post(f"{reference.url}/v1/embeddings", json=body, timeout=120).json()["data"]
    assert_same_answer([v.embedding for v in vectors], [e["embedding"] for e in expected])
    answer = httpx.post(f"{dev.url}/runsync", json={"input": {"route": "/v1/embeddings", "body": body}}, timeout=120)
    assert_same_answer(answer.json()["output"][0]["data"], expected)


def test_a_native_job_on_a_pooling_model_says_what_to_send(dev):
    status = dev.wait_status(dev.run({"prompt": "Hello", "sampling_params": {"max_tokens": 4}}))
    assert status["status"] == "FAILED" and "pooling model" in status["error"] and "/v1/embeddings" in status["error"]
