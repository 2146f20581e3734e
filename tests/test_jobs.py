"""Job parsing and stream batching, without an engine."""

from __future__ import annotations

import pytest

from tpworker.serving.jobs import BatchPolicy, JobError, Limits, parse_job
from tpworker.serving.native import StreamBatcher

DEFAULT = BatchPolicy(max_size=50, min_size=1, growth_factor=3)


def parse(job_input, max_n=16):
    return parse_job({"id": "j", "input": job_input}, default_batching=DEFAULT, limits=Limits(max_n=max_n))


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
        parse_job({"id": "j"}, default_batching=DEFAULT, limits=Limits(max_n=1))


def chunk_sizes(policy: BatchPolicy, tokens: int) -> list[int]:
    batcher = StreamBatcher(1, policy)
    sizes = []
    for _ in range(tokens):
        batcher.add(0, "t", 1, None)
        if batcher.full:
            sizes.append(len(batcher.take({})["choices"][0]["tokens"]))
    return sizes


def test_stream_chunks_grow_by_the_factor_up_to_the_maximum():
    assert chunk_sizes(DEFAULT, 200) == [1, 3, 9, 27, 50, 50, 50]
    assert chunk_sizes(BatchPolicy(8, 8, 1), 20) == [8, 8]
    assert chunk_sizes(BatchPolicy(10, 1, 1.5), 30) == [1, 2, 3, 4, 6, 8]
