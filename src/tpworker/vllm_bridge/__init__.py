"""The one package that touches vLLM internals: everything beyond vLLM's public `AsyncEngineArgs`,
`SamplingParams` and `RequestOutputKind`. A vLLM upgrade touches these modules; `tpworker contract` lists
what they rely on and says what moved, and the end-to-end tests on the real CPU engine catch the rest.

- arguments: engine arguments and `vllm serve` options, through vLLM's CLI parser and config classes
- serve_flags: VLLM_EXTRA_ARGS / VLLM_CONFIG_FILE, `vllm serve`'s namespace and its cross-option checks
- async_llm: the engine's configuration, AsyncLLM with a step observer, engine death
- start_records, start_failures: vLLM's own log records of a start, and the memory errors a retry can fix
- prompts: the renderer (chat template, tokenization, context check)
- sampling: SamplingParams from JSON, vLLM's request errors
- openai_server, asgi_call: vLLM's OpenAI application, in process, called without a socket
- grammar_probe: structured-output specifications compiled and walked in a process of their own
- types: the vLLM classes whose objects cross the bridge, for the type checker
- weights_probe, cpu_worker_probe: per-rank weight memory for `tpworker bench`
"""
