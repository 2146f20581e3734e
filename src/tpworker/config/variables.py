"""The variables the worker reads: the worker's own settings (WorkerSettings, validated by pydantic),
worker-vllm's aliases, the other variables it or its libraries read, and which ones are secrets.
Plain data and names only: reading the environment is settings.py's job."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Variables read besides WorkerSettings and the engine arguments, with what they do.
OTHER_VARIABLES = {
    "HF_TOKEN": "Hugging Face token for gated or private models (read by huggingface_hub; never logged).",
    "CUDA_VISIBLE_DEVICES": "Which GPUs the worker sees (RunPod sets it); TENSOR_PARALLEL_SIZE=auto uses them all.",
    "VLLM_CPU_OMP_THREADS_BIND": "No GPU: cores of each rank, e.g. 0-3|4-7. "
    "Default: the worker splits the cores evenly.",
    "VLLM_CPU_KVCACHE_SPACE": "No GPU: KV cache GiB per rank. Default: 2.",
    "TPWORKER_CACHE_DIR": "Where the default model is built (default: $XDG_CACHE_HOME/tpworker or ~/.cache/tpworker).",
    "RUNPOD_WEBHOOK_GET_JOB": "Set by RunPod: with it, handler.py runs RunPod's job loop instead of a local test.",
    "RAY_ADDRESS": "DISTRIBUTED_EXECUTOR_BACKEND=ray: the Ray cluster's head, host:port (`tpworker cluster head` sets "
    "it for the worker). Unset: the cluster started on this machine by `ray start`.",
    "VLLM_PP_LAYER_PARTITION": "Layers of each pipeline stage, e.g. 31,32,32,31 (read by vLLM; checked at start). "
    "Default: vLLM's even split, the extra layers going to the stages before the last.",
    "NCCL_SOCKET_IFNAME": "`tpworker cluster`: the network interface NCCL uses between nodes. Default: the "
    "interface holding this node's cluster address (ens1 on RunPod Instant Clusters).",
    "GLOO_SOCKET_IFNAME": "`tpworker cluster`: the interface gloo uses between nodes. Default: as NCCL_SOCKET_IFNAME.",
    "NODE_ADDR": "`tpworker cluster`: this node's address on the cluster network (RunPod Instant Clusters set it).",
    "NUM_NODES": "`tpworker cluster head`: nodes to wait for (RunPod Instant Clusters set it). "
    "Default: PIPELINE_PARALLEL_SIZE.",
    "RAY_AUTH_TOKEN": "`tpworker cluster`: a secret, the same on every node: the Ray cluster then requires it "
    "(read by Ray; never logged). Unset: the cluster runs without token authentication (with a warning).",
    "RAY_AUTH_MODE": "Ray's authentication mode (token or disabled), if you set it yourself; `tpworker cluster` "
    "otherwise sets it from RAY_AUTH_TOKEN.",
    "RUNPOD_AI_API_KEY": "Set by RunPod: the job loop's credential (read by the RunPod SDK; never logged).",
    "HF_HUB_OFFLINE": "1: never contact the Hugging Face hub (a model must be baked, cached or a folder). "
    "The worker sets it for vLLM when it serves a baked or cached model.",
    "HF_ENDPOINT": "The Hugging Face hub's address, for a mirror (default: https://huggingface.co).",
    "VLLM_CONFIG_FILE": "A `vllm serve --config` YAML file of vLLM options (as worker-vllm reads it): the variables "
    "override it. The model and its layout stay the worker's variables (MODEL_NAME, TENSOR_PARALLEL_SIZE, ...).",
    "VLLM_EXTRA_ARGS": "`vllm serve` flags, e.g. `--max-num-seqs 64 --enable-prefix-caching` (as worker-vllm reads "
    "them): the last word, over the variables and VLLM_CONFIG_FILE. Server-only flags (host, port) are left out.",
}
# Variables whose values never reach a log line or an error: a name whose last word is one of these
# (HF_TOKEN, RUNPOD_AI_API_KEY, RAY_AUTH_TOKEN), or that holds SECRET or PASSWORD anywhere. Not a name that
# only counts or sizes tokens (MAX_NUM_BATCHED_TOKENS, LONG_PREFILL_TOKEN_THRESHOLD, TOKENIZER_POOL_SIZE).
SECRET_LAST_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASS", "CREDENTIALS")
SECRET_WORDS = ("SECRET", "PASSWORD")

# worker-vllm's names for engine arguments; each is an alternative to the vLLM name.
ALIASES = {
    "MODEL_NAME": "model",
    "MODEL_REVISION": "revision",
    "TOKENIZER_NAME": "tokenizer",
}  # (worker-vllm's TOKENIZER_REVISION is already vLLM's own name)
# worker-vllm's names for options of vLLM's OpenAI frontend.
VLLM_ALIASES = {
    "CUSTOM_CHAT_TEMPLATE": "chat_template",
    "OPENAI_RESPONSE_ROLE": "response_role",
}


class WorkerSettings(BaseModel):
    """Read from the variable named as the field in upper case (and the aliases above)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        None,
        description="Hugging Face id or local folder of the model. Unset on a "
        "machine with no GPU: the embedded SmolLM2-135M-Instruct.",
    )
    revision: str | None = Field(None, description="Model revision: branch, tag or commit.")
    tokenizer: str | None = Field(None, description="Tokenizer id or folder, if not the model's.")
    tokenizer_revision: str | None = Field(None, description="Tokenizer revision.")
    tensor_parallel_size: int | Literal["auto"] = Field(
        "auto",
        description="GPUs the model is split across, or auto: every visible GPU when that is a valid "
        "size for the model, else the largest valid size below it; 1 with no GPU.",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        description="Pipeline stages: the model's layers split in this many groups, one after another "
        "(across nodes on Ray). Each stage has TENSOR_PARALLEL_SIZE GPUs.",
    )
    # Read before vLLM is imported: the plan at start checks the layout against the Ray cluster.
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None,
        description="How vLLM starts its ranks: mp (processes on this machine; the default) or ray "
        "(on the nodes of a Ray cluster, see `tpworker cluster`): TP x PP may then exceed this node's GPUs.",
    )
    max_concurrency: int = Field(30, ge=1, description="Jobs one worker runs at the same time.")
    stream_interval_ms: int = Field(
        50,
        ge=0,
        description="Streams: the first chunk leaves with the first token, each next one this many milliseconds "
        "after the last, with every token made meanwhile (at most 1000/STREAM_INTERVAL_MS posts a second per "
        "stream). 0, or any of the three batch-size variables below set without it: chunks counted in tokens "
        "(worker-vllm's way).",
    )
    default_batch_size: int = Field(
        50, ge=1, description="Counted streams: most tokens in one chunk (per job: `max_batch_size`)."
    )
    min_batch_size: int = Field(
        1, ge=1, description="Counted streams: tokens in the first chunk (per job: `min_batch_size`)."
    )
    batch_size_growth_factor: float = Field(
        3, ge=1, description="Counted streams: each chunk may hold this many times more tokens than the last."
    )
    default_max_tokens: int = Field(
        1024, ge=1, description="`max_tokens` of a native job that does not set it (cut to fit the context)."
    )
    max_n: int = Field(16, ge=1, description="Largest `n` (choices per job) accepted.")
    # Limits on what one job may ask for; a job over one is refused, naming the limit.
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Most prompt tokens one job may send (default: the context, MAX_MODEL_LEN)."
    )
    max_output_tokens: int | None = Field(
        None, ge=1, description="Largest `max_tokens` one job may ask for (default: the context, MAX_MODEL_LEN)."
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest job input accepted, in bytes of JSON (default 10 MiB)."
    )
    # Failure handling: see RELIABILITY.md.
    engine_stall_timeout: float = Field(
        120,
        ge=5,
        description="Seconds the engine may produce nothing while requests are in flight before "
        "the worker fails those jobs and exits, so that RunPod replaces it (its first step after start, which "
        "may compile, gets at least 120 s).",
    )
    shutdown_grace_seconds: float = Field(
        30,
        ge=0,
        description="On SIGTERM, seconds in-flight jobs get to finish before they end with an error.",
    )
    request_timeout: float = Field(
        3600,
        gt=0,
        description="Seconds one job may run (from the moment the worker takes it): past them its engine request "
        "is aborted and the job ends with an error naming this variable (worker-vllm's name and default).",
    )
    structured_output_timeout: float = Field(
        5,
        gt=0,
        description="Seconds the worker gives a job's structured-output specification (regex, grammar, JSON "
        "schema, choice, structural tag) to compile and to be walked for its first tokens, in a process of its "
        "own, before the engine sees it; one that takes longer is refused with a 400 naming the field, so that "
        "no specification can stall the engine for every other job.",
    )
    start_memory_retry: bool = Field(
        True,
        description="When vLLM refuses the start because the KV cache or memory does not suffice, lower the "
        "setting its message points to (MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION or MAX_NUM_SEQS) and start once "
        "more, logging as a warning what changed and how to set it for good. false: fail the start instead.",
    )
    on_refused_start: Literal["serve", "exit"] = Field(
        "serve",
        description="On RunPod, when the start is refused for a reason a restart cannot fix (a bad variable, a "
        "plan that cannot fit, a model that is missing or gated): serve keeps the worker up and answers every job "
        "with the cause and the fix (an exited worker is restarted into the same refusal, and every start is "
        "billed); exit ends it with status 2. Failures a restart may fix (network, a dying engine) always exit.",
    )
    endpoint_kind: Literal["auto", "queue", "http"] = Field(
        "auto",
        description="Which RunPod endpoint the worker serves. queue: jobs through RunPod's job loop (/run, "
        "/runsync, /stream). http: a load-balancing endpoint, requests straight to the worker on PORT (GET /ping "
        "for health, vLLM's routes, POST /job for native jobs). auto: http when PORT is set and RunPod's queue "
        "variables are not.",
    )
    port: int | None = Field(None, ge=1, le=65535, description="HTTP mode: the port the worker listens on.")
    port_health: int | None = Field(
        None, ge=1, le=65535, description="HTTP mode: the port GET /ping is answered on (default: PORT)."
    )
    api_key: str | None = Field(
        None,
        description="HTTP mode: every request but GET /ping must carry Authorization: Bearer <API_KEY> (for a "
        "worker reachable by others, e.g. the same image on a Pod). Unset: no key asked.",
    )
    http_request_timeout: float = Field(
        300,
        gt=0,
        description="HTTP mode: seconds one request may run before it is stopped with a 504 (RunPod's "
        "load balancer answers 524 at about 330 s).",
    )
    job_loop: Literal["worker", "sdk"] = Field(
        "worker",
        description="RunPod's job loop. worker: the SDK's loop with this worker's scaler (a taken job starts at "
        "once, a freed slot is refilled at once, a stop waits for the last take, failed takes back off, the jobs "
        "in progress are kept in memory). sdk: runpod's JobScaler unchanged (it polls its queue every 100 ms, "
        "sleeps 1 s at full concurrency and keeps its jobs in a file in the working directory); the warm-up then "
        "runs with the first job. For comparing the two, or for trying an SDK release `tpworker contract` "
        "reports as changed.",
    )
    engine_warmup: bool = Field(
        True,
        description="Before the first job, send one short request through the engine (prompt, prefill and a "
        "decode step), so that the first job's first token comes as soon as a warm worker's.",
    )
    runpod_init_timeout: int = Field(
        420,
        ge=1,
        description="RunPod's limit on a worker's start, in seconds (set on the endpoint; default 7 minutes): the "
        "worker estimates its start against it at start and warns when the estimate comes close.",
    )
    raw_openai_output: bool = Field(
        True, description="OpenAI streams yield SSE text (`data: {...}`); false: lists of parsed chunk objects."
    )
    native_output_format: Literal["tokens", "openai"] = Field(
        "tokens",
        description="What a native job (`prompt`/`messages` + `sampling_params`) returns: tokens, this worker's and "
        'worker-vllm\'s older releases\' `{"choices": [{"tokens": [...]}], "usage": ...}`; openai, worker-vllm\'s '
        "current release's: the OpenAI chat or completion object, or its SSE text when streamed.",
    )
    openai_served_model_name_override: str | None = Field(
        None, description="The model name clients use (default: the model's name)."
    )
    # Where the model comes from when it is not a local folder (resolve.py).
    model_manifest: str = Field(
        "/models/tpworker-manifest.json",
        description="The manifest `tpworker download` wrote beside a baked model. When it exists and "
        "MODEL_NAME is unset or names the same model, the worker serves that copy, offline.",
    )
    base_path: str = Field(
        "/runpod-volume",
        description="Where a RunPod network volume is mounted. A model not baked into the image is looked "
        "up in its huggingface-cache/hub folder (RunPod's cached models, names in any case) and "
        "downloaded there when missing.",
    )

    @property
    def tensor_parallel_auto(self) -> bool:
        return self.requested_tensor_parallel_size is None

    @property
    def requested_tensor_parallel_size(self) -> int | None:
        """TENSOR_PARALLEL_SIZE as a number, or None when the worker chooses (auto)."""
        return None if self.tensor_parallel_size == "auto" else self.tensor_parallel_size


def variable_name(field_name: str) -> str:
    return field_name.upper()


def vllm_variables(name: str) -> list[str]:
    return [variable_name(name)] + [a for a, field in VLLM_ALIASES.items() if field == name]


def variables_for(field_name: str) -> list[str]:
    """Every variable that sets a field: its own name first, then aliases."""
    return [variable_name(field_name)] + [a for a, f in ALIASES.items() if f == field_name]


def is_secret(variable: str) -> bool:
    name = variable.upper()
    return name.split("_")[-1] in SECRET_LAST_WORDS or any(word in name for word in SECRET_WORDS)


def masked(variable: str, value: str) -> str:
    return "***" if is_secret(variable) and value else value


# Defaults with no GPU, where the user has not chosen (startup.engine_args applies them; README says why).
# vLLM's CPU kernels for bfloat16 differ between processors (oneDNN picks AVX-512 BF16 on one, AMX on
# another) and round differently; on a near tie of the first token that changes the greedy answer (README,
# "Known issues"). float32 gives the same tokens on every x86-64 CPU the tests have run on.
CPU_DTYPE = "float32"
# Otherwise vLLM's CPU build reserves GPU_MEMORY_UTILIZATION (92%) of the machine's memory.
CPU_KV_CACHE_BYTES = 2 * 1024**3
# A step prefills at most this many tokens of a long prompt while other requests run (vLLM's
# long_prefill_token_threshold): on a CPU a step that prefills a whole context takes seconds, and every stream on
# the engine waits for it. The long prompt's own first token comes later instead (README, "Fairness").
CPU_LONG_PREFILL_TOKENS = 16
