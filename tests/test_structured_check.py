"""The structured-output check (serving/structured_check.py) with its real probe process
(vllm_bridge/grammar_probe.py: vLLM's own backends on the default model's tokenizer), no engine: what passes,
what is refused and why, that a specification is tried once, that a costly one costs its limit and a fresh
process, and that a job cancelled mid-check leaves the process in step. Through the worker and both job
forms: tests/bad_inputs.py and tests/test_bad_input.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tpworker.serving.openai_routes import _located, _stream_error
from tpworker.serving.structured_check import StructuredOutputCheck

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def vllm_config(models):
    from vllm import AsyncEngineArgs

    _, padded = models
    return AsyncEngineArgs(model=str(padded), dtype="float32", max_model_len=2048).create_engine_config()


def spec(**constraint):
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**constraint)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 300))


@pytest.mark.slow
def test_what_passes_what_is_refused_and_that_each_is_tried_once(vllm_config):
    async def scenario():
        check = StructuredOutputCheck(vllm_config, TIMEOUT)
        probed = []
        probe_once = check._probe_once
        check._probe_once = lambda *args: probed.append(args[0]) or probe_once(*args)
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        answers = {
            "json schema": await check.problem(spec(json=schema), 64),
            "choice": await check.problem(spec(choice=["yes", "no"]), 64),
            "email regex": await check.problem(spec(regex=r"[a-z]+@[a-z]+\.com"), 64),
            "json object": await check.problem(spec(json_object=True), 64),
            "no string": await check.problem(spec(grammar="root ::= root root"), 64),
            "vLLM's refusal": await check.problem(spec(choice=[]), 64),
        }
        tried = len(probed)
        again = await check.problem(spec(json=schema), 32)  # fewer tokens than already walked: remembered
        longer = await check.problem(spec(json=schema), 128)  # more: walked again
        return answers, tried, again, longer, len(probed)

    answers, tried, again, longer, probed = run(scenario())
    assert [name for name, refusal in answers.items() if refusal is None] == [
        "json schema",
        "choice",
        "email regex",
        "json object",
    ]
    assert answers["no string"].field == "grammar" and "accepts no token" in answers["no string"].message
    assert answers["vLLM's refusal"].field == "choice" and "empty" in answers["vLLM's refusal"].message
    assert tried == 6 and again is None and longer is None and probed == 7


@pytest.mark.slow
def test_a_costly_regex_costs_its_limit_then_a_fresh_process_serves_the_next(vllm_config):
    async def scenario():
        check = StructuredOutputCheck(vllm_config, TIMEOUT)
        check.start()
        first = (await check._probe).process.pid
        began = time.monotonic()
        refusal = await check.problem(spec(regex="((a*)*){50}b"), 256)
        took = time.monotonic() - began
        began = time.monotonic()
        remembered = await check.problem(spec(regex="((a*)*){50}b"), 256)
        again = time.monotonic() - began
        after = await check.problem(spec(regex="[0-9]{3}"), 16)
        return first, (await check._probe).process.pid, refusal, took, remembered, again, after

    first, second, refusal, took, remembered, again, after = run(scenario())
    assert refusal.field == "regex" and "STRUCTURED_OUTPUT_TIMEOUT=2 s" in refusal.message
    assert TIMEOUT <= took < TIMEOUT + 2  # the process is killed at the limit, not waited for
    assert remembered == refusal and again < 0.1
    assert second != first and after is None  # the killed process was replaced, and the new one serves


@pytest.mark.slow
def test_a_job_cancelled_mid_check_leaves_the_process_in_step(vllm_config):
    async def scenario():
        check = StructuredOutputCheck(vllm_config, 30)
        check.start()
        await check._probe
        slow = asyncio.ensure_future(check.problem(spec(regex=r"[a-z]+@[a-z]+\.com"), 256))  # ~0.5 s here
        await asyncio.sleep(0.1)
        slow.cancel()  # the job went away; its check goes on and is remembered
        nothing = await check.problem(spec(grammar="root ::= root root"), 16)
        return nothing, len(check._passed) + len(check._refused)

    nothing, remembered = run(scenario())
    assert nothing.field == "grammar" and "accepts no token" in nothing.message  # its own answer, not the regex's
    assert remembered == 2  # the regex's check finished after its job had gone


def test_a_refusal_through_vllms_server_names_the_body_field_that_carried_it():
    message = "this regex did not compile ... STRUCTURED_OUTPUT_TIMEOUT=5 s"
    cases = {
        "structured_outputs.regex": {"structured_outputs": {"regex": "x"}},
        "response_format": {"response_format": {"type": "json_schema"}},
        "tool_choice": {"tools": [{"type": "function"}], "tool_choice": "required"},
        "text.format": {"text": {"format": {"type": "json_schema"}}},
    }
    for field, body in cases.items():
        assert _located(message, "structured_outputs.regex", body) == (f"{field}: {message}", field)


def test_a_stream_that_begins_with_an_error_is_told_apart_from_one_that_begins_with_text():
    error = {"message": "structured_outputs.grammar: this grammar accepts no token", "code": 400}
    assert _stream_error(f"data: {json.dumps({'error': error})}\n\n") == error
    assert _stream_error('event: error\ndata: {"type": "error", "error": {"message": "x"}}\n\n') == {"message": "x"}
    assert _stream_error('data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n') is None
    assert _stream_error("data: [DONE]\n\n") is None
