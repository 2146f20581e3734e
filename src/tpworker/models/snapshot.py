"""Which files of a model repository the worker needs, and whether a folder holds them all.

The worker serves config.json, the tokenizer, the chat template, the generation config and the
weights: safetensors when the repository has them, else PyTorch .bin. Nothing else: repositories
often carry the same weights again (original/ checkpoints, GGUF, ONNX, consolidated files), which
would double a download and an image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",  # sentencepiece
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
SIDE_FILES = (CONFIG, "generation_config.json", *TOKENIZER_FILES)


@dataclass(frozen=True)
class WeightFormat:
    suffix: str
    index: str  # the sharded checkpoint's map of tensor -> file
    prefix: str = ""  # .bin files other than pytorch_model*.bin are not weights (training_args.bin)


SAFETENSORS = WeightFormat(".safetensors", "model.safetensors.index.json")
PYTORCH_BIN = WeightFormat(".bin", "pytorch_model.bin.index.json", prefix="pytorch_model")
FORMATS = (SAFETENSORS, PYTORCH_BIN)  # in order of preference
LFS_POINTER = b"version https://git-lfs"


def _is_weight(name: str, fmt: WeightFormat) -> bool:
    return "/" not in name and name.endswith(fmt.suffix) and name.startswith(fmt.prefix)


def weight_format(names: Iterable[str]) -> WeightFormat | None:
    """The format to fetch: safetensors if the repository has any at the top level, else .bin."""
    names = list(names)
    return next((fmt for fmt in FORMATS if any(_is_weight(n, fmt) for n in names)), None)


def weight_files(names: Iterable[str], fmt: WeightFormat, index: dict[str, Any] | None) -> list[str]:
    """The weight files to fetch: those the index maps tensors to, else every top-level file of the
    format (a repository with an index may hold other files of the format that are not the model)."""
    if index is not None:
        return sorted(set(index["weight_map"].values()))
    return sorted(n for n in names if _is_weight(n, fmt))


def side_files(names: Iterable[str], tokenizer_only: bool = False) -> list[str]:
    wanted = TOKENIZER_FILES if tokenizer_only else SIDE_FILES
    return sorted(n for n in names if n in wanted)


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:  # reads the header only
        return set(f.keys())


def weights_problems(folder: Path, sizes: dict[str, int] | None = None) -> list[str]:
    """What is wrong with the weights in `folder` (empty: complete). Checks that the files an index
    names are all there, that no file is a Git LFS pointer or has the wrong size, and that every
    safetensors header reads and, with an index, holds every tensor it maps."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    fmt = weight_format(names)
    if fmt is None:
        return [f"no weights in {folder} (no *.safetensors or pytorch_model*.bin file)"]
    index_path = folder / fmt.index
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    files = weight_files(names, fmt, index)
    problems = []
    keys: set[str] = set()
    for name in files:
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if sizes and name in sizes and sizes[name] is not None and size != sizes[name]:
            problems.append(f"{name} has {size} bytes, the hub lists {sizes[name]}")
            continue
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
        if size == 0 or head == LFS_POINTER:
            problems.append(f"{name} is empty or a Git LFS pointer, not weights")
            continue
        if fmt is SAFETENSORS:
            try:
                keys |= _safetensors_keys(path)
            except Exception as e:  # safetensors raises its own error types
                problems.append(f"{name} is not a readable safetensors file ({e})")
    if index is not None and fmt is SAFETENSORS and not problems:
        absent = sorted(set(index["weight_map"]) - keys)
        if absent:
            problems.append(f"{len(absent)} tensors of {fmt.index} are in no file (e.g. {absent[0]})")
    return problems


def folder_problems(folder: Path, sizes: dict[str, int] | None = None) -> list[str]:
    """What keeps `folder` from being served (empty: it can be)."""
    if not (folder / CONFIG).is_file():
        return [f"no {CONFIG} in {folder}"]
    return weights_problems(folder, sizes)


def weight_bytes(folder: Path) -> int:
    names = [p.name for p in folder.iterdir()]
    fmt = weight_format(names)
    if fmt is None:
        return 0
    index_path = folder / fmt.index
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    return sum((folder / n).stat().st_size for n in weight_files(names, fmt, index) if (folder / n).is_file())
