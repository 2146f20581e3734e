"""Valid tensor-parallel sizes and the worker's choice, from config.json alone."""

from __future__ import annotations

import pytest

from tpworker.planning.modelinfo import ModelFacts, read_model_config
from tpworker.planning.parallel import PlanError, plan_parallelism, valid_tp_sizes


def shape(heads: int, kv_heads: int, intermediate: int) -> ModelFacts:
    return ModelFacts.from_config(
        {
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": intermediate,
            "hidden_size": heads * 128,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
        }
    )


@pytest.fixture(scope="module")
def padded(models):
    return ModelFacts.from_config(read_model_config(str(models[1])))


@pytest.fixture(scope="module")
def original(models):
    return ModelFacts.from_config(read_model_config(str(models[0])))


def test_the_padded_default_model_allows_tp_1_2_4(padded, original):
    assert (padded.attention_heads, padded.kv_heads) == (12, 4)
    assert valid_tp_sizes(padded) == [1, 2, 4, 12]
    assert (original.attention_heads, original.kv_heads) == (9, 3)
    # 9 would split the heads, but not the MLP's 1536 intermediate size
    assert valid_tp_sizes(original) == [1, 3]


def test_kv_heads_are_replicated_beyond_their_count():
    assert valid_tp_sizes(shape(64, 8, 28672)) == [1, 2, 4, 8, 16, 32, 64]
    assert valid_tp_sizes(shape(32, 8, 14336), up_to=8) == [1, 2, 4, 8]


def test_a_requested_size_that_cannot_split_the_model_is_refused_with_the_valid_ones(padded, original):
    with pytest.raises(PlanError) as caught:
        plan_parallelism(padded, gpus=0, tp=3)
    message = str(caught.value)
    assert "TENSOR_PARALLEL_SIZE=3" in message and "1, 2, 4, 12" in message
    with pytest.raises(PlanError, match="9 attention heads do not divide by 2"):
        plan_parallelism(original, gpus=0, tp=2)


def test_more_ranks_than_gpus_is_refused(padded):
    with pytest.raises(PlanError, match="needs 4 GPUs, but this worker sees 2"):
        plan_parallelism(padded, gpus=2, tp=4)
    with pytest.raises(PlanError, match="needs 4 GPUs"):
        plan_parallelism(padded, gpus=2, tp=2, pp=2)


def test_auto_uses_every_gpu_when_valid_else_the_largest_valid_size_below(padded):
    assert plan_parallelism(padded, gpus=0, tp=None).tensor_parallel_size == 1
    full = plan_parallelism(padded, gpus=4, tp=None)
    assert (full.tensor_parallel_size, full.warning) == (4, None)
    three = plan_parallelism(padded, gpus=3, tp=None)
    assert three.tensor_parallel_size == 2 and "1 GPU(s) per stage stay idle" in three.warning
    assert plan_parallelism(padded, gpus=8, tp=None).tensor_parallel_size == 4
    assert plan_parallelism(padded, gpus=8, tp=None, pp=2).tensor_parallel_size == 4


def test_cpu_ranks_are_not_limited_by_gpus(padded):
    assert plan_parallelism(padded, gpus=0, tp=4).tensor_parallel_size == 4
