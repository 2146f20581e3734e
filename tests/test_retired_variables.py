"""Old worker-vllm templates start: variables vLLM removed or worker-vllm retired (config/retired.py) are
warned about by name, once, and reach neither vLLM's parser nor a refusal. The table is checked against the
installed vLLM, so that it cannot list a variable that is a live engine argument again."""

from __future__ import annotations

import logging

from tpworker.config import retired
from tpworker.config.settings import load_settings
from tpworker.config.variables import OTHER_VARIABLES, WorkerSettings, masked, variables_for, vllm_variables
from tpworker.vllm_bridge import arguments

# A value each variable had in old templates (worker-vllm's defaults and examples).
TYPICAL = {
    "SWAP_SPACE": "4",
    "USE_V2_BLOCK_MANAGER": "false",
    "PREEMPTION_MODE": "recompute",
    "PREEMPTION_CHECK_PERIOD": "1.0",
    "PREEMPTION_CPU_CAPACITY": "2",
    "SCHEDULER_DELAY_FACTOR": "0.0",
    "NUM_LOOKAHEAD_SLOTS": "0",
    "NUM_SCHEDULER_STEPS": "1",
    "MAX_NUM_PARTIAL_PREFILLS": "1",
    "MAX_LONG_PARTIAL_PREFILLS": "1",
    "DEVICE": "auto",
    "WORKER_USE_RAY": "false",
    "CUDA_GRAPH_SIZES": "1 2 4 8",
    "MAX_SEQ_LEN_TO_CAPTURE": "8192",
    "MAX_CONTEXT_LEN_TO_CAPTURE": "8192",
    "ROPE_SCALING": '{"type": "dynamic", "factor": 2.0}',
    "ROPE_THETA": "1000000",
    "TASK": "generate",
    "OVERRIDE_POOLER_CONFIG": '{"pooling_type": "MEAN"}',
    "QUANTIZATION_PARAM_PATH": "/models/kv_scales.json",
    "TOKENIZER_POOL_SIZE": "0",
    "TOKENIZER_POOL_TYPE": "ray",
    "TOKENIZER_POOL_EXTRA_CONFIG": "{}",
    "GUIDED_DECODING_BACKEND": "outlines",
    "GUIDED_DECODING_DISABLE_FALLBACK": "false",
    "GUIDED_DECODING_DISABLE_ANY_WHITESPACE": "false",
    "GUIDED_DECODING_DISABLE_ADDITIONAL_PROPERTIES": "false",
    "LOGITS_PROCESSOR_PATTERN": ".*",
    "DISABLE_LOG_REQUESTS": "true",
    "DISABLE_LOGGING_REQUEST": "false",
    "VLLM_ATTENTION_BACKEND": "FLASHINFER",
    "SPECULATIVE_MODEL": "org/draft",
    "SPECULATIVE_METHOD": "ngram",
    "NUM_SPECULATIVE_TOKENS": "5",
    "SPECULATIVE_DRAFT_TENSOR_PARALLEL_SIZE": "1",
    "SPECULATIVE_MAX_MODEL_LEN": "4096",
    "SPECULATIVE_DISABLE_BY_BATCH_SIZE": "4",
    "NGRAM_PROMPT_LOOKUP_MAX": "4",
    "NGRAM_PROMPT_LOOKUP_MIN": "1",
    "SPEC_DECODING_ACCEPTANCE_METHOD": "rejection_sampler",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_THRESHOLD": "0.09",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_ALPHA": "0.3",
    "DISABLE_LOGPROBS_DURING_SPEC_DECODING": "true",
    "LONG_LORA_SCALING_FACTORS": "4.0,8.0",
    "LORA_EXTRA_VOCAB_SIZE": "256",
    "ENABLE_LORA_BIAS": "false",
    "QLORA_ADAPTER_NAME_OR_PATH": "org/adapter",
    "ENABLE_PROMPT_ADAPTER": "false",
    "MAX_PROMPT_ADAPTERS": "1",
    "MAX_PROMPT_ADAPTER_TOKEN": "0",
    "DISABLE_MM_PREPROCESSOR_CACHE": "true",
    "ENABLE_MULTIMODAL_ENCODER_DATA_PARALLEL": "true",
    "NUM_REDUNDANT_EXPERTS": "0",
    "EPLB_WINDOW_SIZE": "1000",
    "EPLB_STEP_INTERVAL": "3000",
    "EPLB_LOG_BALANCEDNESS": "false",
    "DISABLE_FRONTEND_MULTIPROCESSING": "false",
}


def test_every_retired_variable_has_a_typical_old_value_here():
    assert set(TYPICAL) == set(retired.RETIRED)


def test_no_retired_variable_is_a_live_option_of_the_installed_vllm_or_one_of_the_workers():
    """A vLLM release that brings a name back (or the worker reading it) fails here, not in production."""
    live = {name for option in arguments.engine_arg_names() for name in vllm_variables(option)}
    live |= {option.upper() for option in arguments.engine_fields() | arguments.FRONTEND_FIELDS}
    live |= {name for field in WorkerSettings.model_fields for name in variables_for(field)}
    live |= set(OTHER_VARIABLES)
    assert sorted(set(retired.RETIRED) & live) == []


def test_an_old_template_starts_with_one_warning_per_retired_variable(caplog):
    caplog.set_level(logging.WARNING, logger="tpworker.config.settings")
    settings = load_settings({**TYPICAL, "MAX_NUM_SEQS": "8"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, value in TYPICAL.items():
        shown = masked(name, value)  # names with TOKEN in them are masked as secrets are
        said = [w for w in warnings if w.startswith(f"{name}={shown} is ignored: ")]
        assert len(said) == 1, (name, warnings)
        assert said[0] == f"{name}={shown} is ignored: {retired.RETIRED[name]}."
    # Nothing of theirs reaches vLLM's parser (which would refuse the start) or the start log.
    assert settings.vllm_args() == {"max_num_seqs": 8}
    assert set(settings.shown()) - set(settings.secrets_set) == {"MAX_NUM_SEQS"}  # (TOKEN* names: "set")


def test_the_warning_says_what_replaced_the_variable(caplog):
    caplog.set_level(logging.WARNING, logger="tpworker.config.settings")
    load_settings({"SWAP_SPACE": "4", "GUIDED_DECODING_BACKEND": "outlines", "TASK": "embed"})
    text = caplog.text
    assert "SWAP_SPACE=4 is ignored: vLLM's V1 engine has no CPU swap space" in text
    assert "GUIDED_DECODING_BACKEND=outlines is ignored: STRUCTURED_OUTPUTS_CONFIG's backend" in text
    assert "TASK=embed is ignored: use RUNNER (generate, pooling, draft) and CONVERT (embed, classify)" in text
    caplog.clear()
    load_settings({"SWAP_SPACE": ""})  # set to nothing: nothing to say
    assert "SWAP_SPACE" not in caplog.text
