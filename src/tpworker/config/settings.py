"""Environment -> one validated Settings object. The only module that reads the environment.

Two kinds of variables:
- the worker's own (WorkerSettings): the model, the parallel layout and the job-loop knobs, read
  without importing vLLM, so that a bad plan is refused within seconds of start;
- every other vLLM engine argument, named as its AsyncEngineArgs field in UPPER_SNAKE_CASE
  (MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ENFORCE_EAGER, ...), converted exactly as `vllm serve`
  converts the same text on its command line (`Settings.vllm_args()`, which imports vLLM);
  the options of vLLM's OpenAI frontend (CHAT_TEMPLATE, TOOL_CALL_PARSER, ...) likewise.
A bad value raises SettingsError: one line per variable, naming it, its value, what is accepted.
Variables vLLM or worker-vllm retired (retired.py) are warned about and left out, so old templates start.
"""

from __future__ import annotations

import functools
import logging
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tpworker.config.retired import RETIRED
from tpworker.config.variables import (
    WorkerSettings,
    is_secret,
    masked,
    variable_name,
    variables_for,
    vllm_variables,
)
from tpworker.errors import StartRefused

log = logging.getLogger(__name__)

# (values, sources) of one layer of vLLM options: name -> value, name -> the variable that set it.
_Layer = tuple[dict[str, Any], dict[str, str]]


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret variables that are set (long enough to be told apart from words)."""
    environ = os.environ if environ is None else environ
    return [v for k, v in environ.items() if is_secret(k) and len(v) >= 8]


class SettingsError(StartRefused):
    """Bad configuration: one line per offending variable, saying what to set instead."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _problem(variable: str, value: str, reason: str, accepted: str) -> str:
    return f"{variable}={masked(variable, value)!r} is not valid: {reason}. Accepted: {accepted}."


def _accepted(name: str) -> str:
    """What a WorkerSettings field accepts, in words."""
    if name == "tensor_parallel_size":
        return "an integer >= 1, or auto (the worker chooses)"
    if name == "distributed_executor_backend":
        return "mp or ray"
    info = WorkerSettings.model_fields[name]
    types = set(typing.get_args(info.annotation)) or {info.annotation}  # int | None -> {int, None}
    kind = next(
        ({int: "an integer", float: "a number", bool: "true or false"}[t] for t in (int, float, bool) if t in types),
        "text",
    )
    bounds = [f">= {m.ge}" for m in info.metadata if getattr(m, "ge", None) is not None]
    return " ".join([kind, *bounds])


def _read_worker_settings(environ: Mapping[str, str], problems: list[str]) -> tuple[WorkerSettings, dict[str, str]]:
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in WorkerSettings.model_fields:
        for variable in variables_for(name):
            text = environ.get(variable, "")
            if text == "":
                continue
            if name in values and values[name] != text:
                problems.append(
                    f"{sources[name]}={values[name]!r} and {variable}={text!r} are both set and differ. "
                    f"Set only one of them."
                )
                continue
            values[name], sources[name] = text, variable
    if values.get("tensor_parallel_size", "").strip().lower() == "auto":
        values["tensor_parallel_size"] = "auto"
    if "distributed_executor_backend" in values:  # vLLM's names are lower case; accept RAY too
        values["distributed_executor_backend"] = values["distributed_executor_backend"].strip().lower()
    try:
        settings = WorkerSettings.model_validate(values)
        if isinstance(settings.tensor_parallel_size, int) and settings.tensor_parallel_size < 1:
            problems.append(
                _problem(
                    sources["tensor_parallel_size"],
                    values["tensor_parallel_size"],
                    "it must be at least 1",
                    _accepted("tensor_parallel_size"),
                )
            )
        return settings, sources
    except ValidationError as e:
        for name in sorted({str(err["loc"][0]) for err in e.errors()}):
            reason = next(err["msg"] for err in e.errors() if err["loc"][0] == name)
            if name == "tensor_parallel_size":
                reason = "it is neither a whole number nor auto"
            problems.append(_problem(sources[name], values[name], reason, _accepted(name)))
        return WorkerSettings.model_validate({}), sources  # not used: the problems stop the start


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("TPWORKER_CACHE_DIR"):
        return Path(environ["TPWORKER_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tpworker"


def cuda_visible_devices(environ: Mapping[str, str] | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES as set (None: unset, every GPU is visible)."""
    environ = os.environ if environ is None else environ
    return environ.get("CUDA_VISIBLE_DEVICES")


# Where vLLM, torch's inductor and Triton keep what they compile, and which of vLLM's caches it uses
# (startup/compile_cache.py).
COMPILE_CACHE_VARIABLES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "VLLM_USE_AOT_COMPILE")


def models_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_dir(environ) / "models"


@dataclass(frozen=True)
class Settings:
    worker: WorkerSettings
    cuda_visible_devices: str | None
    cpu_threads_bind: str | None  # VLLM_CPU_OMP_THREADS_BIND as the user set it
    cpu_kv_cache_set: bool  # VLLM_CPU_KVCACHE_SPACE is set (vLLM reads it itself)
    on_runpod: bool  # RunPod's job loop is reachable (RUNPOD_WEBHOOK_GET_JOB set)
    cache_dir: Path
    # Which variable set each WorkerSettings field (for messages that name it).
    sources: dict[str, str] = field(default_factory=dict)
    # Secret variables that are set (their names are logged, never their values).
    secrets_set: tuple[str, ...] = ()
    # HF_HUB_OFFLINE is set: the hub may not be asked (no download at start).
    hub_offline: bool = False
    hub_endpoint: str | None = None  # HF_ENDPOINT: a mirror of the hub, if set
    # The variables that name vLLM options, as read at start (vllm_args() converts them).
    _engine_environ: dict[str, str] = field(default_factory=dict, repr=False)
    # DISTRIBUTED_EXECUTOR_BACKEND=ray: RAY_ADDRESS (None: the cluster started on this machine).
    ray_address: str | None = None
    # VLLM_PP_LAYER_PARTITION: vLLM reads it in every rank; the plan checks it before they start.
    pp_layer_partition: str | None = None
    # worker-vllm's VLLM_CONFIG_FILE (a `vllm serve --config` YAML: variables override it) and
    # VLLM_EXTRA_ARGS (`vllm serve` flags: the last word, over the variables).
    vllm_config_file: str | None = None
    vllm_extra_args: str | None = None
    # The compile caches' variables the user set (COMPILE_CACHE_VARIABLES).
    compile_cache_environ: dict[str, str] = field(default_factory=dict)

    def source_of(self, field_name: str) -> str:
        return self.sources.get(field_name, variable_name(field_name))

    def engine_source(self, argument: str) -> str:
        """The variable that set a vLLM option (its own name when none did). Imports vLLM (vllm_args)."""
        return self._engine[1].get(argument, variable_name(argument))

    @functools.cached_property
    def _engine(self) -> tuple[dict[str, Any], dict[str, str]]:
        from tpworker.vllm_bridge import arguments, serve_flags

        problems: list[str] = []
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in arguments.engine_arg_names():
            given = [
                (v, self._engine_environ[v]) for v in vllm_variables(name) if self._engine_environ.get(v, "") != ""
            ]
            if len({text for _, text in given}) > 1:
                (a, x), (b, y) = given[:2]
                problems.append(f"{a}={x!r} and {b}={y!r} are both set and differ. Set only one of them.")
                continue
            if not given:
                continue
            variable, text = given[0]
            try:
                values[name] = arguments.parse_engine_arg(name, text)
                sources[name] = variable
            except arguments.EngineArgValueError as e:
                problems.append(_problem(variable, text, e.reason, e.accepted))
        below, above = self._flags(problems)
        values = {**below[0], **values, **above[0]}
        sources = {**below[1], **sources, **above[1]}
        if not problems:  # checks across options, as `vllm serve` makes them before loading
            problems += serve_flags.check_server_args(values)
        if problems:
            raise SettingsError(problems)
        return values, sources

    def _flags(self, problems: list[str]) -> tuple[_Layer, _Layer]:
        """(values, sources) from VLLM_CONFIG_FILE (below the variables) and VLLM_EXTRA_ARGS (above them)."""
        import shlex

        from tpworker.vllm_bridge import arguments, serve_flags

        layers: list[_Layer] = []
        words: Callable[[str], list[str]]
        for variable, text, words in (
            ("VLLM_CONFIG_FILE", self.vllm_config_file, lambda t: ["--config", t]),
            ("VLLM_EXTRA_ARGS", self.vllm_extra_args, shlex.split),
        ):
            values: dict[str, Any] = {}
            try:
                if text:
                    values, ignored = serve_flags.parse_flags(words(text))
                    if ignored:
                        log.warning(
                            "%s sets options with no use inside a worker (%s): left out.", variable, ", ".join(ignored)
                        )
            except arguments.EngineArgValueError as e:
                problems.append(_problem(variable, text or "", e.reason, e.accepted))
            except ValueError as e:  # shlex: an unclosed quote
                problems.append(_problem(variable, text or "", str(e), "vllm serve's flags, quoted as in a shell"))
            layers.append((values, dict.fromkeys(values, variable)))
        return layers[0], layers[1]

    def vllm_args(self) -> dict[str, Any]:
        """vLLM options set through the environment (engine arguments and OpenAI-frontend
        options): name -> converted value. Imports vLLM (seconds). Raises SettingsError naming
        each bad variable."""
        return dict(self._engine[0])

    def shown(self) -> dict[str, str]:
        """Every variable the worker used, secrets masked: for the start log."""
        read = {src: str(getattr(self.worker, name)) for name, src in self.sources.items()}
        read.update({v: self._engine_environ[v] for v in self._engine[1].values()})
        read.update({name: "set" for name in self.secrets_set})
        return {k: masked(k, v) for k, v in sorted(read.items())}


def _warn_retired(environ: Mapping[str, str]) -> None:
    """One warning per retired variable set (an old worker-vllm template): ignored rather than refused."""
    for name, instead in RETIRED.items():
        if environ.get(name, "").strip():
            log.warning("%s=%s is ignored: %s.", name, masked(name, environ[name]), instead)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the worker's variables (no vLLM import). Engine arguments are read now
    and converted by `Settings.vllm_args()`. Raises SettingsError listing every problem."""
    environ = os.environ if environ is None else environ
    _warn_retired(environ)
    problems: list[str] = []
    worker, sources = _read_worker_settings(environ, problems)
    if problems:
        raise SettingsError(problems)
    worker_variables = {v for name in WorkerSettings.model_fields for v in variables_for(name)}
    # Which of these name vLLM options is known only once vLLM is imported (vllm_args()).
    engine_environ = {
        k: v for k, v in environ.items() if k.isupper() and k not in worker_variables and k not in RETIRED and v != ""
    }
    return Settings(
        worker=worker,
        cuda_visible_devices=cuda_visible_devices(environ),
        cpu_threads_bind=environ.get("VLLM_CPU_OMP_THREADS_BIND") or None,
        cpu_kv_cache_set=bool(environ.get("VLLM_CPU_KVCACHE_SPACE")),
        on_runpod=bool(environ.get("RUNPOD_WEBHOOK_GET_JOB")),
        hub_offline=environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"},
        hub_endpoint=environ.get("HF_ENDPOINT") or None,
        cache_dir=cache_dir(environ),
        sources=sources,
        secrets_set=tuple(sorted(k for k, v in environ.items() if v and is_secret(k))),
        _engine_environ=engine_environ,
        ray_address=environ.get("RAY_ADDRESS") or None,
        pp_layer_partition=environ.get("VLLM_PP_LAYER_PARTITION") or None,
        vllm_config_file=environ.get("VLLM_CONFIG_FILE") or None,
        vllm_extra_args=environ.get("VLLM_EXTRA_ARGS") or None,
        compile_cache_environ={name: environ[name] for name in COMPILE_CACHE_VARIABLES if environ.get(name)},
    )


@dataclass(frozen=True)
class HttpPorts:
    """HTTP mode (a load-balancing endpoint), read before the other settings are checked: the server binds
    first, so that a refused start is answered over HTTP too. Unreadable numbers fall back to their
    defaults here; the settings' own check then refuses the start, naming the variable."""

    port: int
    health_port: int
    host: str
    api_key: str | None
    max_in_flight: int
    timeout_s: float


def http_ports(environ: Mapping[str, str] | None = None) -> HttpPorts | None:
    """The HTTP mode's ports and limits when the worker serves HTTP (ENDPOINT_KIND, PORT, RunPod's queue
    variables), else None."""
    environ = os.environ if environ is None else environ
    kind = environ.get("ENDPOINT_KIND", "auto").strip().lower() or "auto"
    port = _number(environ.get("PORT"), int, None)
    on_queue = bool(environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    if port is None or kind == "queue" or (kind == "auto" and on_queue):
        return None
    return HttpPorts(
        port=port,
        health_port=_number(environ.get("PORT_HEALTH"), int, port) or port,
        host="0.0.0.0",  # RunPod's load balancer reaches the worker from outside the container
        api_key=environ.get("API_KEY") or None,
        max_in_flight=_number(environ.get("MAX_CONCURRENCY"), int, 30) or 30,
        timeout_s=_number(environ.get("HTTP_REQUEST_TIMEOUT"), float, 300.0) or 300.0,
    )


def _number(text: str | None, kind: Callable[[str], Any], default: Any) -> Any:
    try:
        value = kind(text.strip()) if text and text.strip() else default
    except ValueError:
        return default
    return value if value is None or value > 0 else default


@dataclass(frozen=True)
class StartPolicy:
    """What handler.py does when its start is refused, read even when the other settings are not valid."""

    on_runpod: bool  # RUNPOD_WEBHOOK_GET_JOB is set: RunPod's job loop
    on_refused_start: str  # ON_REFUSED_START: serve (stay up, answer jobs with the cause) or exit
    job_loop: str  # JOB_LOOP: worker (this worker's scaler in the SDK's loop) or sdk (runpod's own, unchanged)


def start_policy(environ: Mapping[str, str] | None = None) -> StartPolicy:
    environ = os.environ if environ is None else environ
    chosen = environ.get("ON_REFUSED_START", "").strip().lower()
    loop = environ.get("JOB_LOOP", "").strip().lower()
    # A value that is not valid is refused with the other settings; the refusal is then served.
    return StartPolicy(
        bool(environ.get("RUNPOD_WEBHOOK_GET_JOB")),
        "exit" if chosen == "exit" else "serve",
        "sdk" if loop == "sdk" else "worker",
    )


@dataclass(frozen=True)
class ClusterEnvironment:
    """What `tpworker cluster` reads besides the worker's settings: the network interfaces the
    user chose, and the variables RunPod Instant Clusters set on every node."""

    nccl_socket_ifname: str | None = None
    gloo_socket_ifname: str | None = None
    node_addr: str | None = None  # this node's address on the cluster network
    num_nodes: int | None = None  # nodes in the cluster
    ray_auth_mode: str | None = None  # RAY_AUTH_MODE as the user set it
    ray_auth_token_set: bool = False  # RAY_AUTH_TOKEN is set (Ray reads the secret itself)


def load_cluster_environment(environ: Mapping[str, str] | None = None) -> ClusterEnvironment:
    environ = os.environ if environ is None else environ
    nodes = environ.get("NUM_NODES", "").strip()
    if nodes and not (nodes.isdigit() and int(nodes) >= 1):
        raise SettingsError([_problem("NUM_NODES", nodes, "it is not a whole number >= 1", "an integer >= 1")])
    return ClusterEnvironment(
        nccl_socket_ifname=environ.get("NCCL_SOCKET_IFNAME") or None,
        gloo_socket_ifname=environ.get("GLOO_SOCKET_IFNAME") or None,
        node_addr=environ.get("NODE_ADDR") or None,
        num_nodes=int(nodes) if nodes else None,
        ray_auth_mode=environ.get("RAY_AUTH_MODE") or None,
        ray_auth_token_set=bool(environ.get("RAY_AUTH_TOKEN")),
    )
