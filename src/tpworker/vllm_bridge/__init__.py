"""The one package that touches vLLM internals: everything beyond vLLM's public `AsyncLLM`,
`AsyncEngineArgs`, `SamplingParams` and `RequestOutputKind`. A vLLM upgrade touches these modules;
the end-to-end tests on the real CPU engine catch what it breaks.

- arguments: engine arguments and `vllm serve` options, through vLLM's CLI parser and config classes
- async_engine: the engine's configuration, AsyncLLM with a step observer, engine death
- prompts: the renderer (chat template, tokenization, context check)
- sampling: SamplingParams from JSON, vLLM's request errors
- openai_server: vLLM's OpenAI serving objects, in process
- weights_probe, cpu_worker_probe: per-rank weight memory for `tpworker bench`
"""
