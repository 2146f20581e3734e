"""The worker serving a classifier with one label (a cross-encoder), compared with `vllm serve` on the
same folder: /classify, the score routes and the three rerank routes give the same labels, scores and
order for the same inputs; routes such a model lacks are refused as vLLM refuses them, with words that
say which model serves them. RunPod's cloud is the only stand-in (tpworker dev plays its part).

The classifier is made by the tests from the default model: transformers' LlamaForSequenceClassification
on its weights with a one-label score head of random weights (fixed seed), saved in float32. Its scores
mean nothing, but they are a real computation through every layer, so a wrong pooling, a wrong pair
template or a wrong activation changes them. Floats are compared by test_pooling_routes' rule."""

from __future__ import annotations

import httpx
import pytest
from test_pooling_routes import assert_answers_as_vllm

from conftest import DevEndpoint, VllmServer

pytestmark = pytest.mark.engine

MODEL = "smollm2-cross-encoder"


def make_classifier(base, folder) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.05)  # transformers' fresh head; drawn again so the seed alone decides it
    tokenizer = AutoTokenizer.from_pretrained(base)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def classifier(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cross-encoder")
    make_classifier(models[0], folder)
    return folder


@pytest.fixture(scope="module")
def dev(classifier, tmp_path_factory):
    endpoint = DevEndpoint(
        tmp_path_factory.mktemp("dev") / "dev.log", MODEL_NAME=str(classifier), SERVED_MODEL_NAME=MODEL
    )
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def reference(classifier, tmp_path_factory):
    server = VllmServer(classifier, tmp_path_factory.mktemp("vllm") / "vllm.log", MODEL)
    yield server
    server.close()


DOCUMENTS = ["Paris is the capital of France.", "Tokyo is in Japan.", "The sea is salty."]
REQUESTS = [
    ("classify", "/classify", {"model": MODEL, "input": ["The capital of France is Paris.", "Hello"]}),
    ("classify one text", "/classify", {"model": MODEL, "input": "Once upon a time"}),
    ("score", "/score", {"model": MODEL, "text_1": "Where is Paris?", "text_2": DOCUMENTS}),
    ("v1 score", "/v1/score", {"model": MODEL, "text_1": "Where is Paris?", "text_2": DOCUMENTS[0]}),
    ("rerank", "/rerank", {"model": MODEL, "query": "Where is Paris?", "documents": DOCUMENTS}),
    ("v1 rerank, top 2", "/v1/rerank", {"model": MODEL, "query": "Japan", "documents": DOCUMENTS, "top_n": 2}),
    ("v2 rerank", "/v2/rerank", {"model": MODEL, "query": "salt", "documents": DOCUMENTS}),
    ("pooling", "/pooling", {"model": MODEL, "input": "The capital of France is Paris."}),
    ("rerank: query missing", "/rerank", {"model": MODEL, "documents": DOCUMENTS}),
    ("classify: unknown model", "/classify", {"model": "classifier-9", "input": "Hi"}),
    ("embeddings on a classifier", "/v1/embeddings", {"model": MODEL, "input": "Hi"}),
    ("completion on a classifier", "/v1/completions", {"model": MODEL, "prompt": "Hi"}),
]


@pytest.mark.parametrize("name,route,body", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_a_classifier_route_answers_as_vllms_server(dev, reference, name, route, body):
    needed = "an embedding model" if route == "/v1/embeddings" else "a generative model"
    assert_answers_as_vllm(dev, reference, route, body, served_by=needed)


def test_rerank_orders_the_documents_by_their_scores(dev):
    """The same order as /score's scores, through the route job form as worker-vllm users send it."""
    query = {"model": MODEL, "query": "Where is Paris?", "documents": DOCUMENTS}
    ranked = httpx.post(f"{dev.url}/runsync", json={"input": {"route": "/v1/rerank", "body": query}}, timeout=120)
    results = ranked.json()["output"][0]["results"]
    body = {"model": MODEL, "text_1": "Where is Paris?", "text_2": DOCUMENTS}
    scores = [d["score"] for d in httpx.post(f"{dev.url}/openai/score", json=body, timeout=120).json()["data"]]
    assert [r["index"] for r in results] == sorted(range(len(DOCUMENTS)), key=lambda i: -scores[i])
    assert len(set(scores)) == len(scores)  # distinct scores: the order is decided by them, not by ties
