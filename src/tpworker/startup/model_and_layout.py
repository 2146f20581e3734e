"""The model and the parallel layout: decided first, without importing vLLM, so that a mistake in
either is refused within seconds of start (vLLM's import alone takes several)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tpworker import timeline
from tpworker.config.settings import Settings
from tpworker.errors import StartRefused, in_one_line
from tpworker.models import default_model, resolve
from tpworker.planning import hardware
from tpworker.planning.modelinfo import ModelFacts, read_model_config
from tpworker.planning.parallel import ClusterShape, ParallelPlan, plan_parallelism

log = logging.getLogger(__name__)


class StartError(StartRefused):
    """The worker cannot start; the message says what to change."""


# The model to serve: a folder (or a hub id to download), its served name, and why (resolve.py).
ModelChoice = resolve.Located


@dataclass(frozen=True)
class Layout:
    model: ModelChoice
    facts: ModelFacts
    parallel: ParallelPlan
    gpus: tuple[hardware.Gpu, ...]


def choose_model(settings: Settings, gpus: list[hardware.Gpu]) -> ModelChoice:
    # The baked manifest, a folder, the network volume's cache, or a hub id (resolve.py's order).
    located = resolve.locate(settings)
    if located is not None:
        return located
    if gpus:
        raise StartError(
            "MODEL_NAME is not set and no model is baked into the image (no manifest at "
            f"{settings.worker.model_manifest}). Set it to a Hugging Face model id "
            "(e.g. meta-llama/Meta-Llama-3-70B-Instruct) or to a folder holding the model."
        )
    try:
        _, padded = default_model.ensure_built(settings.cache_dir / "models")
    except Exception as e:
        raise StartError(f"MODEL_NAME is not set and the embedded default model could not be built: {e}") from e
    return ModelChoice(
        str(padded),
        default_model.SERVED_NAME,
        f"MODEL_NAME is not set and no GPU is visible: serving the embedded default model "
        f"{default_model.SERVED_NAME} (zero-padded to 12 heads / 4 KV heads for TP 1, 2, 4) from {padded}",
    )


def model_facts(settings: Settings, model: ModelChoice) -> ModelFacts:
    try:
        config = read_model_config(model.path_or_id, settings.worker.revision)
        return ModelFacts.from_config(config)
    except Exception as e:
        from tpworker.models.hub_check import is_transient

        raise StartError(
            f"Cannot read the model's config.json ({settings.source_of('model')}={model.path_or_id!r}): "
            f"{in_one_line(e)}",
            retryable=is_transient(e),
        ) from e


def plan_layout(settings: Settings, cluster: ClusterShape | None = None) -> Layout:
    """The model and the parallel layout, checked without importing vLLM (a bad plan is refused
    within seconds). Raises StartError / PlanError.
    With DISTRIBUTED_EXECUTOR_BACKEND=ray the layout is checked against the Ray cluster: `cluster`
    when given (the shape `tpworker cluster head` expects), else the live one at RAY_ADDRESS."""
    gpus = hardware.visible_gpus(settings.cuda_visible_devices)
    model = choose_model(settings, gpus)
    log.info("Model: %s", model.why)
    facts = model_facts(settings, model)
    parallel = plan_parallelism(
        facts,
        len(gpus),
        settings.worker.requested_tensor_parallel_size,
        settings.worker.pipeline_parallel_size,
        tp_variable=settings.source_of("tensor_parallel_size"),
        backend=settings.worker.distributed_executor_backend,
        cluster=ray_cluster(settings, cluster),
        layer_partition=settings.pp_layer_partition,
    )
    log.info(
        "Parallelism: TP=%d x PP=%d%s, because %s.",
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        " on Ray" if parallel.backend == "ray" else "",
        parallel.reason,
    )
    if parallel.pipeline_parallel_size > 1:
        log.info("Layers per pipeline stage: %s.", ", ".join(map(str, parallel.layers_per_stage)))
    if parallel.warning:
        log.warning(parallel.warning)
    timeline.mark("parallel plan checked")
    if model.download:  # only now: a plan that cannot work is refused before a long download
        model = resolve.download(settings, model)
        log.info("Model: %s", model.why)
    if model.offline:
        log.info("Everything the model needs is local: vLLM runs with HF_HUB_OFFLINE=1.")
    timeline.mark("model resolved", model.why if model.download else "")
    return Layout(model, facts, parallel, tuple(gpus))


def ray_cluster(settings: Settings, given: ClusterShape | None) -> ClusterShape | None:
    """The Ray cluster's shape when the ranks run on Ray (read from the live cluster unless given)."""
    if settings.worker.distributed_executor_backend != "ray" or given is not None:
        return given
    from tpworker.planning import raystate

    shape = raystate.cluster_shape(settings.ray_address)
    log.info(
        "Ray cluster at %s: %d node(s), GPUs %s, CPUs %s.",
        shape.address,
        shape.nodes,
        "+".join(map(str, shape.gpus)),
        "+".join(map(str, shape.cpus)),
    )
    return shape
