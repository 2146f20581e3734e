"""What a model is, from its config.json and the size of its weights: no GPU, no vLLM, no weights
loaded. A local folder, a config.json file, or a Hugging Face repo id (fetched file by file)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs nest the language model's settings."""
    text: dict[str, Any] = config.get("text_config") or config
    return text


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs from config.json."""

    model_type: str
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int  # of the dense MLP, or of each expert for MoE models
    vocab_size: int
    tied_embeddings: bool
    experts: int  # 0 for a dense model
    attention_bias: bool
    checkpoint_dtype: str
    quantization: dict[str, Any] | None
    max_position_embeddings: int | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelFacts:
        text = _text_config(config)
        heads = text["num_attention_heads"]
        experts = int(text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts") or 0)
        intermediate = (experts and text.get("moe_intermediate_size")) or text["intermediate_size"]
        return cls(
            model_type=text.get("model_type") or config.get("model_type", ""),
            layers=text["num_hidden_layers"],
            hidden_size=text["hidden_size"],
            attention_heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            intermediate_size=intermediate,
            vocab_size=text["vocab_size"],
            tied_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            experts=experts,
            # Qwen2 has q/k/v biases without saying so; the others say attention_bias.
            attention_bias=bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
            checkpoint_dtype=str(
                text.get("torch_dtype")
                or text.get("dtype")
                or config.get("torch_dtype")
                or config.get("dtype")
                or "bfloat16"
            ),
            quantization=config.get("quantization_config"),
            max_position_embeddings=text.get("max_position_embeddings"),
        )


def _json(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def read_model_config(model: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a local folder, a config.json file, or a Hugging Face repo (fetched alone)."""
    path = Path(model)
    if path.is_file():
        return _json(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: is it a model folder?")
        return _json(path / "config.json")
    from huggingface_hub import hf_hub_download

    return _json(Path(hf_hub_download(model, "config.json", revision=revision)))


def weights_size(model: str, revision: str | None = None) -> int | None:
    """Bytes of the model's weights: the files of a local folder, or the hub's safetensors metadata.
    None when unknown (a bare config.json, or a hub repo that cannot be asked)."""
    path = Path(model)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(path.glob("*.pt"))
        return sum(f.stat().st_size for f in files) or None
    if path.exists():
        return None
    try:
        from huggingface_hub import get_safetensors_metadata

        metadata = get_safetensors_metadata(model, revision=revision)
    except Exception:  # offline, gated, no safetensors: the planner estimates from config.json
        return None
    return sum(count * SAFETENSORS_DTYPE_BYTES.get(dtype, 2) for dtype, count in metadata.parameter_count.items())
