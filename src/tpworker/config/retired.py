"""Variables that RunPod templates made for worker-vllm may still set, but that no longer name anything:
vLLM removed the engine argument (most went with its V0 engine) or worker-vllm retired the name. Each maps
to what replaced it, in words. settings.py warns about each one set and keeps it away from vLLM's parser,
so that an old template starts instead of being refused (a refused start loops on RunPod).
Plain data. Checked against vLLM 0.32.0: tests/test_retired_variables.py fails when a name here is a live
engine argument of the installed vLLM (or one of the worker's own variables)."""

from __future__ import annotations

_SPECULATIVE = "SPECULATIVE_CONFIG, a JSON object: "
_NO_V0 = "removed with vLLM's V0 engine"

RETIRED: dict[str, str] = {
    # Memory and scheduling (V0's block manager, swap and scheduler are gone).
    "SWAP_SPACE": "vLLM's V1 engine has no CPU swap space (a preempted request is recomputed); for more KV cache "
    "room see KV_CACHE_MEMORY_BYTES, or offload KV blocks to CPU memory with KV_OFFLOADING_SIZE (GiB)",
    "USE_V2_BLOCK_MANAGER": f"{_NO_V0}: V1 has one block manager",
    "PREEMPTION_MODE": f"{_NO_V0}: V1 always preempts by recomputing",
    "PREEMPTION_CHECK_PERIOD": f"not an option of vLLM 0.32: {_NO_V0}, V1 preempts by recomputing",
    "PREEMPTION_CPU_CAPACITY": f"not an option of vLLM 0.32: {_NO_V0}, V1 preempts by recomputing",
    "SCHEDULER_DELAY_FACTOR": f"{_NO_V0}; no replacement",
    "NUM_LOOKAHEAD_SLOTS": f"{_NO_V0}; speculative decoding is set with SPECULATIVE_CONFIG",
    "NUM_SCHEDULER_STEPS": "multi-step scheduling was removed from vLLM; no replacement",
    "MAX_NUM_PARTIAL_PREFILLS": "removed from vLLM; LONG_PREFILL_TOKEN_THRESHOLD still caps long prefills",
    "MAX_LONG_PARTIAL_PREFILLS": "removed from vLLM; LONG_PREFILL_TOKEN_THRESHOLD still caps long prefills",
    "DEVICE": "removed from vLLM, which detects the platform itself (the GPUs it sees, else the CPU)",
    "WORKER_USE_RAY": "use DISTRIBUTED_EXECUTOR_BACKEND=ray",
    # CUDA graphs are captured by batch size now.
    "CUDA_GRAPH_SIZES": "renamed: CUDAGRAPH_CAPTURE_SIZES (or cudagraph_capture_sizes in COMPILATION_CONFIG)",
    "MAX_SEQ_LEN_TO_CAPTURE": "removed: CUDA graphs are captured by batch size; see MAX_CUDAGRAPH_CAPTURE_SIZE "
    "and CUDAGRAPH_CAPTURE_SIZES",
    "MAX_CONTEXT_LEN_TO_CAPTURE": "removed: CUDA graphs are captured by batch size; see MAX_CUDAGRAPH_CAPTURE_SIZE "
    "and CUDAGRAPH_CAPTURE_SIZES",
    # The model's configuration.
    "ROPE_SCALING": "vLLM reads RoPE from the model's config.json (rope_parameters); to change it set HF_OVERRIDES, "
    'e.g. {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, '
    '"rope_theta": 1000000}} (the whole object: it replaces the model\'s)',
    "ROPE_THETA": "vLLM reads RoPE from the model's config.json (rope_parameters); to change it set HF_OVERRIDES "
    'with the whole rope_parameters object, rope_theta included, e.g. {"rope_parameters": {"rope_type": '
    '"default", "rope_theta": 1000000}}',
    "TASK": "use RUNNER (generate, pooling, draft) and CONVERT (embed, classify) instead",
    "OVERRIDE_POOLER_CONFIG": "renamed: POOLER_CONFIG",
    "QUANTIZATION_PARAM_PATH": "removed from vLLM: fp8 KV cache scales are read from the checkpoint",
    "TOKENIZER_POOL_SIZE": "removed from vLLM; RENDERER_NUM_WORKERS sets vLLM's tokenizing threads",
    "TOKENIZER_POOL_TYPE": "removed from vLLM; RENDERER_NUM_WORKERS sets vLLM's tokenizing threads",
    "TOKENIZER_POOL_EXTRA_CONFIG": "removed from vLLM; RENDERER_NUM_WORKERS sets vLLM's tokenizing threads",
    # Structured outputs.
    "GUIDED_DECODING_BACKEND": 'STRUCTURED_OUTPUTS_CONFIG\'s backend, e.g. {"backend": "xgrammar"} (auto, xgrammar, '
    "guidance, outlines or lm-format-enforcer)",
    "GUIDED_DECODING_DISABLE_FALLBACK": "removed from vLLM; no replacement",
    "GUIDED_DECODING_DISABLE_ANY_WHITESPACE": "STRUCTURED_OUTPUTS_CONFIG's disable_any_whitespace",
    "GUIDED_DECODING_DISABLE_ADDITIONAL_PROPERTIES": "STRUCTURED_OUTPUTS_CONFIG's disable_additional_properties",
    "LOGITS_PROCESSOR_PATTERN": "removed from vLLM: logits processors are loaded at start with LOGITS_PROCESSORS",
    # Logging.
    "DISABLE_LOG_REQUESTS": "vLLM logs no requests unless ENABLE_LOG_REQUESTS=true",
    "DISABLE_LOGGING_REQUEST": "vLLM logs no requests unless ENABLE_LOG_REQUESTS=true",
    "VLLM_ATTENTION_BACKEND": "vLLM 0.32 no longer reads it: set ATTENTION_BACKEND",
    # Speculative decoding: one JSON object now.
    "SPECULATIVE_MODEL": f"{_SPECULATIVE}model (or SPEC_MODEL)",
    "SPECULATIVE_METHOD": f"{_SPECULATIVE}method (or SPEC_METHOD)",
    "NUM_SPECULATIVE_TOKENS": f"{_SPECULATIVE}num_speculative_tokens (or SPEC_TOKENS)",
    "SPECULATIVE_DRAFT_TENSOR_PARALLEL_SIZE": f"{_SPECULATIVE}draft_tensor_parallel_size",
    "SPECULATIVE_MAX_MODEL_LEN": f"{_SPECULATIVE}max_model_len",
    "SPECULATIVE_DISABLE_BY_BATCH_SIZE": "removed from vLLM; no replacement",
    "NGRAM_PROMPT_LOOKUP_MAX": f'{_SPECULATIVE}prompt_lookup_max, with "method": "ngram"',
    "NGRAM_PROMPT_LOOKUP_MIN": f'{_SPECULATIVE}prompt_lookup_min, with "method": "ngram"',
    "SPEC_DECODING_ACCEPTANCE_METHOD": f"{_NO_V0}: V1 verifies draft tokens by rejection sampling",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_THRESHOLD": f"{_NO_V0}: V1 verifies draft tokens by rejection sampling",
    "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_ALPHA": f"{_NO_V0}: V1 verifies draft tokens by rejection sampling",
    "DISABLE_LOGPROBS_DURING_SPEC_DECODING": f"{_NO_V0}; no replacement",
    # LoRA and prompt adapters.
    "LONG_LORA_SCALING_FACTORS": "removed from vLLM (long-context LoRA is gone); no replacement",
    "LORA_EXTRA_VOCAB_SIZE": "removed from vLLM: LoRA adapters no longer add tokens; no replacement",
    "ENABLE_LORA_BIAS": "removed from vLLM; no replacement",
    "QLORA_ADAPTER_NAME_OR_PATH": "removed from vLLM: load adapters with ENABLE_LORA and LORA_MODULES",
    "ENABLE_PROMPT_ADAPTER": "prompt adapters were removed from vLLM; no replacement",
    "MAX_PROMPT_ADAPTERS": "prompt adapters were removed from vLLM; no replacement",
    "MAX_PROMPT_ADAPTER_TOKEN": "prompt adapters were removed from vLLM; no replacement",
    # Multimodal and expert parallelism.
    "DISABLE_MM_PREPROCESSOR_CACHE": "use MM_PROCESSOR_CACHE_GB=0",
    "ENABLE_MULTIMODAL_ENCODER_DATA_PARALLEL": "use MM_ENCODER_TP_MODE=data",
    "NUM_REDUNDANT_EXPERTS": "EPLB_CONFIG's num_redundant_experts",
    "EPLB_WINDOW_SIZE": "EPLB_CONFIG's window_size",
    "EPLB_STEP_INTERVAL": "EPLB_CONFIG's step_interval",
    "EPLB_LOG_BALANCEDNESS": "EPLB_CONFIG's log_balancedness",
    # The server process: the worker runs vLLM in its own process, with no HTTP server of vLLM's.
    "DISABLE_FRONTEND_MULTIPROCESSING": "removed from vLLM; the worker runs vLLM's frontend in its own process anyway",
}
