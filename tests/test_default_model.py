"""The zero-padded default model computes exactly what the original computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "Water boils at"]


@pytest.fixture(scope="module")
def pair(models):
    original, padded = models
    load = lambda folder: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # noqa: E731
    return AutoTokenizer.from_pretrained(original), load(original), load(padded)


@pytest.fixture(scope="module")
def original_in_float64(models):
    return AutoModelForCausalLM.from_pretrained(models[0], dtype=torch.float64).eval()


def test_padded_config_has_12_heads_4_kv_heads_and_the_same_head_size(models):
    original = json.loads((models[0] / "config.json").read_text())
    padded = json.loads((models[1] / "config.json").read_text())
    assert (original["num_attention_heads"], original["num_key_value_heads"]) == (9, 3)
    assert (padded["num_attention_heads"], padded["num_key_value_heads"], padded["head_dim"]) == (12, 4, 64)


def test_new_heads_are_zero_and_old_weights_unchanged(models):
    original = load_file(models[0] / "model.safetensors")
    padded = load_file(models[1] / "model.safetensors")
    assert original.keys() == padded.keys()
    q = padded["model.layers.7.self_attn.q_proj.weight"]
    assert q.shape == (12 * 64, 576)
    assert torch.equal(q[: 9 * 64], original["model.layers.7.self_attn.q_proj.weight"])
    assert not q[9 * 64 :].any()
    assert not padded["model.layers.7.self_attn.v_proj.weight"][3 * 64 :].any()
    assert not padded["model.layers.7.self_attn.o_proj.weight"][:, 9 * 64 :].any()
    assert torch.equal(padded["model.embed_tokens.weight"], original["model.embed_tokens.weight"])


@torch.no_grad()
@pytest.mark.slow
def test_padded_model_gives_the_same_greedy_tokens_in_float32(pair):
    tokenizer, original, padded = pair
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = original.generate(ids, max_new_tokens=32, do_sample=False)
        assert torch.equal(padded.generate(ids, max_new_tokens=32, do_sample=False), expected)
        assert expected.shape[1] == ids.shape[1] + 32 or tokenizer.eos_token_id in expected[0]


@torch.no_grad()
@pytest.mark.slow
def test_padded_model_logits_match_within_float32_rounding(pair, original_in_float64):
    """The zero heads add exactly 0, but a matrix product over more (zero) columns may sum in another order.
    How far that moves the logits depends on the CPU's kernels: measured 0.0 on an AMD EPYC (AVX-512 BF16),
    over 1e-5 on an Intel Xeon with AMX, so no fixed tolerance fits every machine. The scale is float32's own
    rounding error on this machine, measured against the original model in float64 (4.5e-5 to 6.5e-5 on the
    AMD machine, on logits up to 36): the padded model may differ from the original by at most 4 times that
    (the two float32 errors can add up, with room to spare). A padding mistake moves logits by 0.1 or more."""
    tokenizer, original, padded = pair
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = original_in_float64(ids).logits
        expected = original(ids).logits
        float32_error = (expected.double() - reference).abs().max().item()
        difference = (padded(ids).logits - expected).abs().max().item()
        assert 0 < float32_error < 1e-3, float32_error  # float32 really ran, and is close to float64
        assert difference <= 4 * float32_error, (prompt, difference, float32_error)
