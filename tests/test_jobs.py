"""Job parsing, without an engine (stream batching: test_batching.py)."""

from __future__ import annotations

import dataclasses

import pytest

from tpworker.config.variables import WorkerSettings
from tpworker.serving.batching import BatchPolicy
from tpworker.serving.job_errors import JobError
from tpworker.serving.job_input import parse_job
from tpworker.serving.limits import Limits

DEFAULT = BatchPolicy(max_size=50, min_size=1, growth_factor=3)
LIMITS = Limits.from_settings(WorkerSettings())  # the defaults, from the settings alone


def parse(job_input, max_n=16, max_output_tokens=None):
    limits = dataclasses.replace(LIMITS, max_n=max_n, max_output_tokens=max_output_tokens)
    return parse_job({"id": "j", "input": job_input}, default_batching=DEFAULT, limits=limits)


def test_a_prompt_with_apply_chat_template_becomes_a_user_message():
    request = parse({"prompt": "Hi", "apply_chat_template": True})
    assert request.prompt is None and request.messages == [{"role": "user", "content": "Hi"}]


def test_per_job_batching_overrides_the_defaults():
    assert parse({"prompt": "x"}).batching == DEFAULT
    request = parse({"prompt": "x", "max_batch_size": 10, "min_batch_size": 2, "batch_size_growth_factor": 2})
    assert request.batching == BatchPolicy(10, 2, 2)
    assert parse({"prompt": "x", "max_batch_size": 4, "min_batch_size": 9}).batching.min_size == 4


def test_sampling_params_become_vllm_sampling_params():
    params = parse(
        {"prompt": "x", "sampling_params": {"temperature": 0.2, "stop": ["\n"], "n": 2, "seed": 3}}
    ).sampling_params
    assert (params.temperature, params.stop, params.n, params.seed) == (0.2, ["\n"], 2, 3)
    assert params.max_tokens is None  # filled in once the prompt's length is known
    assert parse({"prompt": "x", "sampling_params": {"max_tokens": 7}}).sampling_params.max_tokens == 7


def test_internal_sampling_fields_are_not_accepted():
    with pytest.raises(JobError) as caught:
        parse({"prompt": "x", "sampling_params": {"output_kind": 1}})
    assert caught.value.param == "sampling_params.output_kind"


def test_a_job_without_input():
    with pytest.raises(JobError, match="no 'input'"):
        parse_job({"id": "j"}, default_batching=DEFAULT, limits=LIMITS)


def test_the_limits_defaults_and_checks_come_from_the_settings():
    assert (LIMITS.max_n, LIMITS.max_request_bytes) == (WorkerSettings().max_n, WorkerSettings().max_request_bytes)
    capped = Limits(max_n=2, max_output_tokens=100, max_prompt_tokens=10, max_request_bytes=1000)
    with pytest.raises(JobError, match=r"^n: 3 is above this worker's limit of 2 \(MAX_N\)\.$"):
        capped.check_n(3, "n")
    with pytest.raises(JobError, match=r"^max_tokens: 101 is above .* 100 \(MAX_OUTPUT_TOKENS\)\.$"):
        capped.check_output_tokens(101, "max_tokens")
    with pytest.raises(JobError, match=r"^prompt: the prompt is 11 tokens, above .* 10 \(MAX_PROMPT_TOKENS\)\.$"):
        capped.check_prompt_tokens(11, "prompt")
    with pytest.raises(JobError, match=r"^input is 1,00\d bytes, above this worker's limit of 1,000"):
        capped.check_request_bytes("x" * 1000)
    capped.check_n(2, "n"), capped.check_output_tokens(100, "max_tokens"), capped.check_prompt_tokens(10, "prompt")
    assert (capped.default_output_tokens(512), LIMITS.default_output_tokens(512)) == (100, 512)


def test_both_route_forms_reach_the_same_request():
    from tpworker.serving.job_input import OpenAIRequest

    body = {"model": "m", "prompt": "Hi"}
    assert parse({"openai_route": "/tokenize", "openai_input": body}) == OpenAIRequest("/tokenize", body, "POST")
    assert parse({"route": "/tokenize/", "body": body, "method": "post"}) == OpenAIRequest("/tokenize", body, "POST")
    assert parse({"route": "/v1/messages", "body": {**body, "stream": True}}).stream
    # a model list without a body, as RunPod's gateway sends it, in either form
    assert parse({"openai_route": "/v1/models"}) == OpenAIRequest("/v1/models", None, "GET")
    assert parse({"route": "/v1/models", "method": "GET"}) == OpenAIRequest("/v1/models", None, "GET")


@pytest.mark.parametrize(
    "job_input,param,words",
    [
        ({"route": "/generate", "body": {}}, "route", ["'/generate'", "Accepted", "/v1/messages", "/tokenize"]),
        ({"openai_route": "/v1/engines", "openai_input": {}}, "openai_route", ["'/v1/engines'"]),
        ({"route": "/tokenize", "body": {}, "method": "PUT"}, "method", ["POST", "'PUT'"]),
        ({"route": "/v1/models", "body": {"a": 1}}, "body", ["GET"]),
        ({"route": "/tokenize", "body": None}, "body", ["JSON object", "/tokenize"]),
        ({"route": "/tokenize", "body": {}, "openai_input": {}}, "route", ["openai_route", "not both"]),
        ({"route": "/v1/messages", "body": {"max_tokens": 10**6, "messages": []}}, "max_tokens", ["MAX_OUTPUT_TOKENS"]),
    ],
)
def test_a_bad_route_job_names_the_field(job_input, param, words):
    with pytest.raises(JobError) as refused:
        parse(job_input, max_output_tokens=512)
    assert refused.value.param == param and all(word in refused.value.message for word in words), refused.value


@pytest.mark.parametrize(
    "messages,param,words",
    [
        ([{"role": "tool", "content": "42"}], "messages[0].tool_call_id", ["Field required", "tool message"]),
        ([{"role": "user"}], "messages[0].content", ["Field required", "user message"]),
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 5}],
            "messages[1].content",
            ["string"],
        ),
    ],
)
def test_native_messages_need_the_fields_openais_api_requires_of_their_role(messages, param, words):
    with pytest.raises(JobError) as refused:
        parse({"messages": messages})
    assert refused.value.param == param and all(word in refused.value.message for word in words), refused.value


def test_a_tool_conversation_in_native_messages_is_accepted():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert parse({"messages": messages}).messages == messages


def test_native_jobs_in_the_openai_output_shape_become_openai_requests():
    from tpworker.serving.job_input import OpenAIRequest, parse_native

    def as_openai(job_input):
        return parse_native(job_input, default_batching=DEFAULT, limits=LIMITS, output="openai")

    messages = [{"role": "user", "content": "Hi"}]
    request = as_openai({"messages": messages, "stream": True, "sampling_params": {"logprobs": 2, "top_k": 5}})
    body = {"messages": messages, "stream": True, "logprobs": True, "top_logprobs": 2, "top_k": 5}
    assert request == OpenAIRequest("/v1/chat/completions", body)
    assert as_openai({"prompt": "Hi", "sampling_params": {"max_tokens": 3}}) == OpenAIRequest(
        "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "stream": False}
    )
    wrapped = as_openai({"prompt": "Hi", "apply_chat_template": True})
    assert wrapped.route == "/v1/chat/completions" and wrapped.body["messages"] == messages
    with pytest.raises(JobError, match="sampling_params.temperature"):  # checked as a native job first
        as_openai({"prompt": "Hi", "sampling_params": {"temperature": -1}})
