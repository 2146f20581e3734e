"""Every part of vLLM the worker relies on beyond its documented interface (the `vllm` package's
AsyncEngineArgs, SamplingParams, RequestOutputKind, and `vllm serve`'s flags), with why.

A vLLM upgrade is tried by installing it and running `python -m tpworker.contract`: each line that is not
"ok" names a seam that moved, and the module under `used_by` is where to follow it. The log messages are
vLLM's own words; a message that moved drops a phase from the start timeline (start_records) or a cause from
a start's error (start_failures)."""

from __future__ import annotations

from tpworker.contract.seam import Seam

ENGINE = "vllm_bridge/async_llm.py"
ARGUMENTS = "vllm_bridge/arguments.py"
OPENAI = "vllm_bridge/openai_server.py"
PROBE = "vllm_bridge/grammar_probe.py"
RECORDS = "vllm_bridge/start_records.py"
FAILURES = "vllm_bridge/start_failures.py"

VLLM_SEAMS: tuple[Seam, ...] = (
    # The engine
    Seam(
        "vllm.v1.engine.async_llm:AsyncLLM.from_vllm_config",
        ENGINE,
        "builds the engine from the VllmConfig the worker checked before the start (one config, read once)",
        parameters=("vllm_config", "enable_log_requests", "disable_log_stats", "stat_loggers"),
    ),
    Seam(
        "vllm.v1.metrics.loggers:StatLoggerBase.record",
        ENGINE,
        "the watchdog's sign of progress: called at every engine step (vLLM calls the interface unstable)",
        parameters=("self", "scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx"),
        exact=True,
    ),
    Seam(
        "vllm.v1.metrics.loggers:StatLoggerBase",
        ENGINE,
        "the abstract methods the step logger implements",
        fields=("record", "log_engine_initialized"),
    ),
    Seam(
        "vllm.v1.engine.async_llm:AsyncLLM",
        "serving/engine.py",
        "what the worker reads of the running engine: its configuration, its renderer, whether it failed",
        fields=("vllm_config", "model_config", "renderer", "errored", "generate", "encode", "abort", "shutdown"),
    ),
    Seam(
        "vllm.config:VllmConfig",
        "serving/engine.py",
        "the parts of the engine's configuration the worker, the probe and the OpenAI layer read",
        fields=("model_config", "parallel_config", "structured_outputs_config", "speculative_config"),
    ),
    Seam(
        "vllm.config:ModelConfig",
        OPENAI,
        "the served length, the runner (generate or pooling), the tokenizer's presence, the vocabulary",
        fields=("max_model_len", "runner_type", "skip_tokenizer_init", "get_vocab_size"),
    ),
    Seam(
        "vllm.config:ParallelConfig",
        "serving/engine.py",
        "the layout the engine took, for the start timeline and the watchdog",
        fields=("tensor_parallel_size", "pipeline_parallel_size"),
    ),
    Seam("vllm.v1.engine.exceptions:EngineDeadError", ENGINE, "tells a dead engine from a failed request"),
    Seam(
        "vllm.config:CompilationMode",
        ENGINE,
        "the traced-once eager mode of compiled warm-up",
        fields=("DYNAMO_TRACE_ONCE",),
    ),
    Seam(
        "vllm.platforms:current_platform",
        ENGINE,
        "whether the platform can place ranks on Ray; the IR kernels imported before the OpenAI layer",
        fields=("ray_device_key", "device_name", "import_ir_kernels"),
    ),
    Seam(
        "vllm.engine.protocol:EngineClient",
        OPENAI,
        "what LimitedEngineClient wraps for vLLM's serving objects",
        fields=("generate", "encode", "get_supported_tasks", "errored", "collective_rpc"),
    ),
    Seam(
        "vllm.engine.protocol:EngineClient.generate",
        OPENAI,
        "LimitedEngineClient checks the prompt and the structured output before passing the call on",
        parameters=("prompt", "sampling_params", "request_id"),
    ),
    Seam(
        "vllm.envs",
        OPENAI,
        "vLLM's API key, sent so vLLM's routes accept the job RunPod authenticated",
        fields=("VLLM_API_KEY",),
    ),
    Seam(
        "vllm.envs:VLLM_PROCESS_NAME_PREFIX",
        "serving/engine.py",
        "the engine's processes are found by their title (VLLM::EngineCore, VLLM::Worker_TP0, ...)",
        value="VLLM",
    ),
    Seam(
        "vllm.utils.system_utils:set_process_title",
        "serving/engine.py",
        "titles vLLM's processes",
        parameters=("name", "suffix", "prefix"),
    ),
    Seam(
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner",
        "vllm_bridge/cpu_worker_probe.py",
        "`tpworker bench` records the weights' memory per rank where vLLM's CPU runner reads it",
        fields=("model_memory_usage",),
    ),
    Seam("vllm.v1.worker.cpu_worker:CPUWorker.load_model", "vllm_bridge/cpu_worker_probe.py", "measured around on CPU"),
    # Engine arguments and `vllm serve` options
    Seam(
        "vllm.entrypoints.launchers.cli_args:make_arg_parser",
        ARGUMENTS,
        "`vllm serve`'s whole parser: each variable's text is converted as the same flag would be",
        parameters=("parser",),
    ),
    Seam(
        "vllm.entrypoints.launchers.cli_args:BaseFrontendArgs",
        ARGUMENTS,
        "the frontend options (FRONTEND_FIELDS is checked against it)",
    ),
    Seam(
        "vllm.entrypoints.launchers.cli_args:validate_parsed_serve_args",
        "vllm_bridge/serve_flags.py",
        "`vllm serve`'s cross-option checks, run on the options the variables set",
        parameters=("args",),
    ),
    Seam(
        "vllm.utils.argparse_utils:FlexibleArgumentParser", ARGUMENTS, "the parser class vLLM's flags are registered on"
    ),
    Seam(
        "vllm.config.utils:get_attr_docs", ARGUMENTS, "each config field's documentation, for the variables' reference"
    ),
    Seam(
        "argparse:ArgumentParser",
        ARGUMENTS,
        "Python's own privates: the registered actions (argparse has no public list of them) and its groups "
        "(each titled by the vLLM config class its options belong to)",
        fields=("_actions", "_action_groups"),
    ),
    Seam("argparse:_ArgumentGroup", ARGUMENTS, "the actions of one group", fields=("_group_actions",)),
    Seam(
        "vllm.engine.arg_utils",
        ARGUMENTS,
        "the names of vLLM's converters, read to say in words what a variable accepts (a renamed one is "
        "described as 'a string')",
        texts=("def human_readable_int", "def parse_dataclass(", "def union_dict_and_str(", "def _parse_type("),
    ),
    # Prompts and sampling
    Seam(
        "vllm.renderers.params:ChatParams",
        "vllm_bridge/prompts.py",
        "the chat template's parameters",
        fields=("chat_template", "chat_template_kwargs"),
    ),
    Seam(
        "vllm.renderers.params:TokenizeParams",
        "vllm_bridge/prompts.py",
        "the context check vLLM's server applies",
        fields=("max_total_tokens", "add_special_tokens"),
    ),
    Seam(
        "vllm.renderers.base:BaseRenderer.render_chat_async",
        "vllm_bridge/prompts.py",
        "renders a native job's messages as vLLM's chat route does",
        parameters=("conversations", "chat_params", "tok_params"),
    ),
    Seam(
        "vllm.renderers.base:BaseRenderer.render_cmpl_async",
        "vllm_bridge/prompts.py",
        "tokenizes a native job's prompt as vLLM's completion route does",
        parameters=("prompts", "tok_params"),
    ),
    Seam(
        "vllm.exceptions:VLLMValidationError",
        "vllm_bridge/sampling.py",
        "vLLM's request errors, with the field they name",
    ),
    # vLLM's OpenAI application, in process
    Seam("vllm.entrypoints.launchers.app:build_app", OPENAI, "`vllm serve`'s application", parameters=("args",)),
    Seam(
        "vllm.entrypoints.launchers.api_server.app_state:init_app_state",
        OPENAI,
        "`vllm serve`'s serving objects on the worker's engine",
        parameters=("engine_client", "state", "args", "supported_tasks"),
    ),
    Seam(
        "vllm.entrypoints.serve.exception_handling.error_response:create_error_response",
        OPENAI,
        "vLLM's mapping of an exception to OpenAI's error object",
    ),
    Seam(
        "vllm.entrypoints.openai.models.serving:OpenAIServingModels",
        OPENAI,
        "the served names and LoRA adapters, shared by both job forms",
        fields=("base_model_paths", "lora_requests"),
    ),
    Seam("vllm.renderers.chat_utils:load_chat_template", OPENAI, "CHAT_TEMPLATE read as `vllm serve` reads it"),
    Seam(
        "vllm.renderers.hf:resolve_chat_template", OPENAI, "the model's template, resolved before the engine is ready"
    ),
    Seam("vllm.tokenizers.registry:cached_tokenizer_from_config", OPENAI, "the engine's tokenizer, loaded once"),
    # Structured output, checked in a probe process
    Seam(
        "vllm.v1.structured_output.request:get_structured_output_key",
        PROBE,
        "the constraint a specification carries, as the engine keys it",
    ),
    Seam(
        "vllm.sampling_params:SamplingParams.verify",
        PROBE,
        "vLLM's own checks of a specification (and its choice of backend)",
        parameters=("model_config", "speculative_config", "structured_outputs_config", "tokenizer"),
    ),
    Seam(
        "vllm.sampling_params:StructuredOutputsParams",
        PROBE,
        "the options that change a grammar; the backend vLLM chose",
        fields=("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern", "_backend"),
    ),
    *(
        Seam(
            f"vllm.v1.structured_output.{module}:{backend}",
            PROBE,
            "compiled and walked as the engine's StructuredOutputManager does",
            parameters=("vllm_config", "tokenizer", "vocab_size"),
            fields=("compile_grammar", "allocate_token_bitmask"),
        )
        for module, backend in (
            ("backend_xgrammar", "XgrammarBackend"),
            ("backend_guidance", "GuidanceBackend"),
            ("backend_outlines", "OutlinesBackend"),
            ("backend_lm_format_enforcer", "LMFormatEnforcerBackend"),
        )
    ),
    Seam(
        "vllm.v1.structured_output.backend_types:StructuredOutputGrammar",
        PROBE,
        "the mask the engine fills at each step",
        fields=("fill_bitmask", "accept_tokens", "is_terminated"),
    ),
    # The start's log records
    Seam("vllm.logger:DEFAULT_LOGGING_CONFIG", RECORDS, "extended with a handler that records the start's phases"),
    Seam(
        "vllm.config.logging:LoggingConfig",
        RECORDS,
        "points vLLM's processes at that configuration",
        fields=("pylogging_config_file",),
    ),
    Seam(
        "vllm.v1.engine.core",
        RECORDS,
        "the engine core's start and readiness; the error that ended a start",
        texts=(
            "Initializing a V1 LLM engine",
            "init engine (profile, create kv cache, warmup model) took",
            "EngineCore failed to start.",
        ),
    ),
    Seam(
        "vllm.v1.worker.cpu_model_runner",
        RECORDS,
        "a rank begins to load (CPU)",
        texts=("Starting to load model", "Warming up done"),
    ),
    Seam(
        "vllm.v1.worker.gpu_model_runner",
        RECORDS,
        "a rank's load and graphs (GPU)",
        texts=("Starting to load model", "Model loading took", "Graph capturing finished in"),
    ),
    Seam(
        "vllm.model_executor.model_loader.weight_utils", RECORDS, "the checkpoint's size", texts=("Checkpoint size:",)
    ),
    Seam(
        "vllm.model_executor.model_loader.default_loader",
        RECORDS,
        "the weights' read time",
        texts=("Loading weights took",),
    ),
    Seam(
        "vllm.compilation.backends",
        RECORDS,
        "a graph compiled or loaded from the cache",
        texts=("Directly load the compiled graph", "Compiling a graph for compile range"),
    ),
    Seam("vllm.compilation.monitor", RECORDS, "torch.compile's total", texts=("torch.compile took",)),
    Seam(
        "vllm.compilation.decorators",
        RECORDS,
        "an AOT compilation saved or loaded",
        texts=("saved AOT compiled function to", "Directly load AOT compilation from path"),
    ),
    Seam(
        "vllm.v1.core.kv_cache_utils",
        f"{RECORDS}, {FAILURES}",
        "the KV cache's size; a KV cache too small for MAX_MODEL_LEN (the start's memory retry reads the length "
        "that fits)",
        texts=(
            "KV cache size:",
            "To serve at least one request with the model's max seq len",
            "the estimated maximum model length is",
            "No available memory for the cache blocks",
        ),
    ),
    Seam(
        "vllm.v1.worker.utils",
        FAILURES,
        "less free GPU memory than GPU_MEMORY_UTILIZATION asks for",
        texts=("Free memory on device", "is less than desired GPU memory utilization"),
    ),
    Seam(
        "vllm.v1.worker.gpu_model_runner",
        FAILURES,
        "the sampler's warm-up at MAX_NUM_SEQS ran out of memory",
        texts=("out of memory occurred when warming up",),
    ),
)
