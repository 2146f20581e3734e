"""Each rank's weight memory, for `tpworker bench`: a worker extension asked through collective_rpc."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from vllm.engine.protocol import EngineClient
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

# Engine arguments for measuring each rank's weight memory: worker_extension_cls adds
# WeightsProbe's method to every vLLM worker; on CPU, worker_cls=MEASURED_CPU_WORKER also measures
# the load (vLLM's GPU workers measure it themselves: "Model loading took X GiB").
WEIGHTS_PROBE = "tpworker.vllm_bridge.weights_probe.WeightsProbe"
MEASURED_CPU_WORKER = "tpworker.vllm_bridge.cpu_worker_probe.MeasuredCPUWorker"


class RankWeights(TypedDict):
    rank: int
    loading_bytes: int | None  # the load's own measure (None: not measured)
    tensor_bytes: int


class WeightsProbe:
    """Mixed into each vLLM worker (rank) by `worker_extension_cls=WEIGHTS_PROBE`, so that
    `collective_rpc` can ask every rank what its loaded model holds."""

    model_runner: GPUModelRunner  # the worker's (the CPU runner is one too); declared only, for the type checker

    def tpworker_weights_memory(self) -> RankWeights:
        model = self.model_runner.get_model()
        seen: set[int] = set()
        held = 0
        for tensor in [*model.parameters(), *model.buffers()]:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:  # tied weights share one storage: count it once
                seen.add(storage.data_ptr())
                held += storage.nbytes()
        loading = int(getattr(self.model_runner, "model_memory_usage", 0) or 0)
        return {"rank": int(getattr(self, "rank", 0)), "loading_bytes": loading or None, "tensor_bytes": held}


async def weights_memory_per_rank(llm: EngineClient) -> list[RankWeights]:
    """Per rank: the memory the model load took (GPU: vLLM's own measure of device memory; CPU:
    the rank process's, with MEASURED_CPU_WORKER), and the bytes of the torch tensors the model
    holds. Needs an engine started with WEIGHTS_PROBE."""
    return sorted(await llm.collective_rpc("tpworker_weights_memory"), key=lambda r: r["rank"])
