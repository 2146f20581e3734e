"""The vLLM classes whose objects cross the bridge, named for the type checker.

Serving code holds these objects (the engine, its configuration, its outputs) without importing vLLM's
internal modules itself: it imports the names from here under `if TYPE_CHECKING:`, so at run time nothing
is imported and the layer rule (vLLM's internals are touched in vllm_bridge/ alone) holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.config import ModelConfig, VllmConfig
    from vllm.engine.protocol import EngineClient
    from vllm.inputs import EngineInput
    from vllm.logprobs import Logprob, SampleLogprobs
    from vllm.lora.request import LoRARequest
    from vllm.outputs import PoolingRequestOutput, RequestOutput
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "AsyncLLM",
    "EngineClient",
    "EngineInput",
    "Logprob",
    "LoRARequest",
    "ModelConfig",
    "PoolingRequestOutput",
    "RequestOutput",
    "SampleLogprobs",
    "StructuredOutputsParams",
    "TokenizerLike",
    "VllmConfig",
]
