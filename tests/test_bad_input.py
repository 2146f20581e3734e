"""Bad input through `tpworker dev`: every malformed job (tests/bad_inputs.py, native and OpenAI
forms) gets one error naming what is wrong, none crashes or hangs the worker, and a valid job still
gets the right answer afterwards. The same run has HF_TOKEN and RUNPOD_AI_API_KEY set, and
nothing the worker printed or answered contains either."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bad_inputs import API_KEY, CASES, HF_TOKEN, MEDIUM_TEXT
from conftest import RELIABILITY, DevEndpoint, tallied

pytestmark = pytest.mark.engine

VALID = {"prompt": "The capital of France is", "sampling_params": {"max_tokens": 6, "temperature": 0}}


@pytest.fixture(scope="module")
def dev(limited_dev):
    return limited_dev  # MAX_CONCURRENCY=16, LIMITS, HF_TOKEN and RUNPOD_AI_API_KEY set (conftest)


def exits(dev: DevEndpoint) -> list[str]:
    return re.findall(r"The worker exited with status (-?\d+)", dev.log())


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60
    assert len({name for name, _, _ in CASES}) == len(CASES)


def test_every_bad_job_gets_one_clear_error_and_the_worker_keeps_serving(dev):
    worker = dev.worker_process()
    ids = {name: dev.run(job) for name, job, _ in CASES}
    problems = []
    for name, _, expected in CASES:
        status = dev.wait_status(ids[name], seconds=120)
        error = status.get("error", "")
        ok = status["status"] == "FAILED" and "output" not in status and all(part in error for part in expected)
        RELIABILITY["bad_inputs"].append((name, ok))
        if not ok:
            problems.append(f"{name}: expected an error with {expected}, got {status}")
    assert not problems, "\n".join(problems)
    assert "Traceback" not in dev.log() and "Internal error" not in dev.log()
    assert exits(dev) == [] and dev.worker_process().pid == worker.pid  # the same worker, never restarted
    done = dev.wait_status(dev.run(VALID))
    assert done["status"] == "COMPLETED" and "Paris" in "".join(done["output"][0]["choices"][0]["tokens"])


RAW_BODIES = [
    ("body is not JSON", b'{"model": "x", "messages": [', "JSON"),
    ("body is invalid UTF-8", b'{"model": "x", "messages": "\xff\xfe"}', "JSON"),
    ("body nested 100000 deep", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "JSON"),
    ("body is a list", b"[1, 2]", "JSON object|input"),
]


@pytest.mark.parametrize("name,body,expected", RAW_BODIES, ids=[r[0] for r in RAW_BODIES])
def test_bodies_that_are_not_json_objects_get_a_400(dev, name, body, expected):
    for path in ("/openai/v1/chat/completions", "/run"):
        with tallied("bad_inputs", f"{name} ({path})"):
            answer = httpx.post(dev.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
            assert answer.status_code == 400, (path, answer.text)
            assert any(part in answer.text for part in expected.split("|")), (path, answer.text)


def test_openai_errors_over_http_carry_their_status(dev):
    """The OpenAI route answers a bad request with OpenAI's error object and its HTTP status."""
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=f"{dev.url}/openai/v1", api_key="x", max_retries=0)
    with tallied("bad_inputs", "openai http: prompt limit"):
        with pytest.raises(BadRequestError) as refused:
            client.chat.completions.create(
                model="SmolLM2-135M-Instruct", max_tokens=4, messages=[{"role": "user", "content": MEDIUM_TEXT}]
            )
        assert "MAX_PROMPT_TOKENS" in str(refused.value)
    with tallied("bad_inputs", "openai http: n limit"):
        with pytest.raises(BadRequestError) as refused:
            client.chat.completions.create(
                model="SmolLM2-135M-Instruct", max_tokens=4, n=9, messages=[{"role": "user", "content": "Hi"}]
            )
        assert "MAX_N" in str(refused.value)
    with tallied("bad_inputs", "openai http: unknown model"), pytest.raises(NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])


def test_a_costly_structured_output_is_refused_before_the_engine_and_other_jobs_go_on(dev):
    """One job's regex of nested quantifiers (a new one: never checked before) and valid jobs sent right
    after it: the regex is refused once its check passes STRUCTURED_OUTPUT_TIMEOUT (2 s here), the engine
    never sees it, and the valid jobs, streamed and not, complete with the right answer."""
    costly = {
        "prompt": "a" * 64,
        "sampling_params": {"max_tokens": 512, "structured_outputs": {"regex": "((c*)*){60}d"}},
    }
    with tallied("bad_inputs", "costly regex with valid jobs in flight"):
        began = time.monotonic()
        costly_id = dev.run(costly)
        valid_ids = [dev.run({**VALID, "stream": stream}) for stream in (False, True, False)]
        refused = dev.wait_status(costly_id, seconds=120)
        took = time.monotonic() - began
        assert refused["status"] == "FAILED", refused
        assert "sampling_params.structured_outputs.regex" in refused["error"]
        assert "STRUCTURED_OUTPUT_TIMEOUT=2 s" in refused["error"]
        assert took < 60, took  # the check's limit and the probe's restart, never the engine's minutes
        for job_id in valid_ids:
            done = dev.wait_status(job_id, seconds=120)
            text = "".join(piece for chunk in done["output"] for piece in chunk["choices"][0]["tokens"])
            assert done["status"] == "COMPLETED" and "Paris" in text, done
        again = dev.wait_status(dev.run(costly), seconds=30)  # remembered: refused at once
        assert again["status"] == "FAILED" and again["error"] == refused["error"]
    assert "Traceback" not in dev.log()


# Property: whatever values a job's sampling parameters hold, the worker answers with either a
# complete output or exactly one error, and keeps serving.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
PARAM_NAMES = [
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "n",
    "stop",
    "seed",
    "logprobs",
    "presence_penalty",
    "min_tokens",
    "ignore_eos",
    "unknown_param",
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@example(params={"max_tokens": None}, stream=False, use_messages=False)  # found by hypothesis: was a 500
@given(
    params=st.dictionaries(st.sampled_from(PARAM_NAMES), json_values, max_size=3),
    stream=st.booleans(),
    use_messages=st.booleans(),
)
def test_any_sampling_params_give_an_output_or_one_error(dev, params, stream, use_messages):
    params = {**params, "max_tokens": params.get("max_tokens", 4)}
    job = {"sampling_params": params, "stream": stream}
    job.update({"messages": [{"role": "user", "content": "Hi"}]} if use_messages else {"prompt": "Hi"})
    answer = httpx.post(
        f"{dev.url}/runsync",
        content=json.dumps({"input": job}),  # NaN goes out as NaN
        headers={"content-type": "application/json"},
        timeout=300,
    ).json()
    assert answer["status"] in ("COMPLETED", "FAILED"), answer
    if answer["status"] == "FAILED":
        error = answer["error"]
        assert "message" in error and "Internal error" not in error, answer
        # the error names a field of the job
        assert any(name in error for name in [*PARAM_NAMES, "sampling_params", "max_tokens", "prompt"]), answer
    else:
        assert answer["output"] and all("choices" in chunk for chunk in answer["output"]), answer


def test_secrets_never_appear_in_logs_or_outputs(dev):
    """Runs last in this module: everything the worker printed and answered in it is checked."""
    statuses = [dev.wait_status(dev.run(job)) for job in (VALID, {"prompt": 5}, {"prompt": "Hi", "promt": 1})]
    printed = dev.log()
    answered = json.dumps(statuses)
    for secret in (HF_TOKEN, API_KEY):
        assert secret not in printed and secret not in answered
        assert secret[4:20] not in printed  # not even in part
    assert re.search(r"HF_TOKEN'?: '\*\*\*'", printed) and re.search(r"RUNPOD_AI_API_KEY'?: '\*\*\*'", printed)
