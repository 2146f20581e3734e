"""How much each GPU holds: weights per rank, KV cache per token, tokens that fit.

From config.json alone (and, when known, the weights' real total size), for decoder-only
transformers of the llama family (Llama, Mistral, Mixtral, Qwen2, ...):
- parameters = embeddings + lm_head (unless tied) + layers x (attention + MLP or experts) + norms;
- what a TP rank holds: everything vLLM shards (embeddings and lm_head by vocabulary; q/o, k/v
  and the MLP by heads and columns) divided by TP, plus what it replicates (norms, the MoE router,
  and KV heads copied when TP exceeds their count); a PP stage holds its share of the layers;
- bytes per parameter from the serving dtype, or the checkpoint's quantization.
When the real size of the weights is known, the breakdown is scaled to it (quantization scales and
any layer the formula misses are then counted too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tpworker.planning.modelinfo import ModelFacts

GB = 1e9
GiB = 1024**3
# What vLLM needs per GPU besides weights and KV cache: the CUDA context, activations of a prefill
# chunk, CUDA graphs, NCCL buffers. vLLM measures it at start; this is the planner's estimate.
RUNTIME_RESERVE_BYTES = 2 * GiB

DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "fp8_ds_mla": 1,
    "int8": 1,
}


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by how TP treats them."""

    vocab: int  # embeddings and lm_head: sharded by vocabulary
    attention_qo: int  # q and o projections (and q bias): sharded by heads
    attention_kv: int  # k and v projections (and biases): sharded, or replicated past kv_heads
    mlp: int  # dense MLP or every expert: sharded by columns
    replicated: int  # norms, MoE router

    @property
    def total(self) -> int:
        return self.vocab + self.attention_qo + self.attention_kv + self.mlp + self.replicated


def parameter_counts(facts: ModelFacts) -> ParameterCounts:
    h, hd = facts.hidden_size, facts.head_dim
    q_width, kv_width = facts.attention_heads * hd, facts.kv_heads * hd
    qo = 2 * h * q_width + (q_width if facts.attention_bias else 0)
    kv = 2 * h * kv_width + (2 * kv_width if facts.attention_bias else 0)
    mlp = 3 * h * facts.intermediate_size * max(facts.experts, 1)
    router = h * facts.experts
    return ParameterCounts(
        vocab=facts.vocab_size * h * (1 if facts.tied_embeddings else 2),
        attention_qo=facts.layers * qo,
        attention_kv=facts.layers * kv,
        mlp=facts.layers * mlp,
        replicated=facts.layers * (2 * h + router) + h,
    )


def serving_dtype(facts: ModelFacts, dtype: str | None = None) -> str:
    """The dtype vLLM computes in: DTYPE if set, else (vLLM's auto) the checkpoint's 16-bit type,
    float16 for float32 checkpoints."""
    if dtype and dtype != "auto":
        return "float32" if dtype == "float" else ("float16" if dtype == "half" else dtype)
    return "float16" if facts.checkpoint_dtype == "float32" else facts.checkpoint_dtype


def weight_bytes_per_parameter(facts: ModelFacts, dtype: str | None = None) -> tuple[float, float]:
    """(bytes per parameter of the linear layers, of everything else): quantized checkpoints keep
    embeddings and norms in the serving dtype."""
    plain = DTYPE_BYTES.get(serving_dtype(facts, dtype), 2)
    quant = facts.quantization or {}
    method = str(quant.get("quant_method", "")).lower()
    if "fp8" in method or quant.get("fmt") in ("e4m3", "e5m2"):
        return 1.0, plain
    bits = quant.get("bits") or quant.get("w_bit") or (quant.get("weight_bits"))
    if bits:
        group = quant.get("group_size") or quant.get("q_group_size") or 128
        scale_overhead = 2 * 2 / group if group and group > 0 else 0  # a 16-bit scale and zero per group
        return bits / 8 + scale_overhead, plain
    return plain, plain


@dataclass(frozen=True)
class RankMemory:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    weight_bytes: float  # on the most loaded rank
    kv_bytes_per_token: float  # on every rank


class MemoryModel:
    """Bytes per rank for a model, a serving dtype and a KV cache dtype."""

    def __init__(
        self,
        facts: ModelFacts,
        dtype: str | None = None,
        kv_cache_dtype: str | None = None,
        real_weight_bytes: float | None = None,
    ):
        self.facts = facts
        self.counts = parameter_counts(facts)
        linear, plain = weight_bytes_per_parameter(facts, dtype)
        c = self.counts
        self._bytes = {
            "vocab": c.vocab * plain,
            "attention_qo": c.attention_qo * linear,
            "attention_kv": c.attention_kv * linear,
            "mlp": c.mlp * linear,
            "replicated": c.replicated * plain,
        }
        estimated = sum(self._bytes.values())
        self.total_weight_bytes = real_weight_bytes or estimated
        self.from_real_size = real_weight_bytes is not None
        scale = self.total_weight_bytes / estimated
        self._bytes = {k: v * scale for k, v in self._bytes.items()}
        kv_dtype = kv_cache_dtype if kv_cache_dtype and kv_cache_dtype != "auto" else serving_dtype(facts, dtype)
        self.kv_dtype_bytes = DTYPE_BYTES.get(kv_dtype, 2)

    def kv_heads_per_rank(self, tp: int) -> int:
        """vLLM splits KV heads over ranks, or gives each rank one when TP exceeds them."""
        return max(1, self.facts.kv_heads // tp)

    def rank(self, tp: int, pp: int = 1) -> RankMemory:
        b = self._bytes
        layers_share = math.ceil(self.facts.layers / pp) / self.facts.layers  # the fullest stage
        kv_share = self.kv_heads_per_rank(tp) / self.facts.kv_heads
        per_layer = (b["attention_qo"] + b["mlp"]) / tp + b["attention_kv"] * kv_share + b["replicated"]
        # embeddings sit on the first stage, lm_head on the last; with PP the fullest stage holds one
        vocab = b["vocab"] / tp if pp == 1 or self.facts.tied_embeddings else b["vocab"] / 2 / tp
        weights = per_layer * layers_share + vocab
        kv = (
            2
            * math.ceil(self.facts.layers / pp)
            * self.kv_heads_per_rank(tp)
            * self.facts.head_dim
            * self.kv_dtype_bytes
        )
        return RankMemory(tp, pp, weights, kv)


@dataclass(frozen=True)
class Capacity:
    """What fits on each GPU of a plan."""

    usable_bytes: float  # GPU memory x GPU_MEMORY_UTILIZATION
    weight_bytes: float
    kv_cache_bytes: float  # left for the KV cache after weights and the runtime reserve
    kv_tokens: int
    max_model_len: int
    sequences_at_max_len: float

    @property
    def weights_fit(self) -> bool:
        return self.weight_bytes <= self.usable_bytes

    @property
    def fits_one_sequence(self) -> bool:
        return self.kv_tokens >= self.max_model_len


def capacity(
    rank: RankMemory,
    gpu_bytes: float,
    utilization: float,
    max_model_len: int,
    reserve_bytes: float = RUNTIME_RESERVE_BYTES,
) -> Capacity:
    usable = gpu_bytes * utilization
    kv_cache = max(0.0, usable - rank.weight_bytes - reserve_bytes)
    tokens = int(kv_cache // rank.kv_bytes_per_token)
    return Capacity(usable, rank.weight_bytes, kv_cache, tokens, max_model_len, tokens / max_model_len)
