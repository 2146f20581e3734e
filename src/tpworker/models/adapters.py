"""Where the LoRA adapters of LORA_MODULES come from at start, looked for as the model is:

1. a local folder (the module's path: an adapter copied into the image, or on the volume);
2. the adapters baked into the image (`tpworker download-adapters`, the image build's LORA_MODULES:
   a hub cache beside the baked model's manifest, /models/adapters);
3. the RunPod network volume's hub cache (BASE_PATH/huggingface-cache/hub);
4. a download from the hub into that cache (the container's own when no volume is mounted), unless
   HF_HUB_OFFLINE is set; else a clear error naming the adapter and every place looked at.

Each module's path becomes a local folder, so vLLM never asks the hub for an adapter at a request."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tpworker.config.settings import Settings
from tpworker.models.resolve import ModelNotFound, find_cached, hub_cache

log = logging.getLogger(__name__)


def locate_adapter(settings: Settings, name: str, path_or_id: str) -> Path:
    """The local folder of one adapter (downloading it when it is only on the hub). Raises ModelNotFound."""
    if Path(path_or_id).is_dir():
        return Path(path_or_id)
    if path_or_id.startswith(("/", "./", "../", "~")):
        raise ModelNotFound(f"LORA_MODULES: the adapter {name}'s path {path_or_id!r} is not a folder on this machine.")
    if (found := find_cached(baked_cache(settings), path_or_id, None, adapter_problems)) is not None:
        log.info("LoRA adapter %s: %s is baked into the image (%s).", name, path_or_id, found)
        return found
    cache = hub_cache(settings)
    if (found := find_cached(cache, path_or_id, None, adapter_problems)) is not None:
        log.info("LoRA adapter %s: %s is in the network volume's cache (%s).", name, path_or_id, found)
        return found
    if settings.hub_offline:
        raise ModelNotFound(
            f"LORA_MODULES: the adapter {name} ({path_or_id}) is not available offline (not a folder, not baked into "
            f"{baked_cache(settings)}, not in {cache}) "
            "and HF_HUB_OFFLINE is set. Copy it into the image and give its folder (name=/path), cache it on the "
            "volume, or unset HF_HUB_OFFLINE."
        )
    return _download(settings, name, path_or_id)


def _download(settings: Settings, name: str, repo_id: str) -> Path:
    volume = Path(settings.worker.base_path)
    folder = download_adapter(settings, repo_id, hub_cache(settings) if volume.is_dir() else None)
    log.info("LoRA adapter %s: %s was downloaded from the hub into %s.", name, repo_id, folder)
    return folder


def download_adapter(settings: Settings, repo_id: str, cache: Path | None) -> Path:
    """The adapter's snapshot folder in the hub cache `cache` (None: huggingface_hub's own), downloaded
    now. Raises ModelNotFound when the hub refuses or the repository holds no peft adapter."""
    from huggingface_hub import snapshot_download

    from tpworker.models.download import explain

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache, endpoint=settings.hub_endpoint))
    except Exception as e:  # the hub's errors, in words (gated, not found, no network, ...)
        raise explain(e, repo_id, None, cache or Path("~/.cache/huggingface")) from None
    if problems := adapter_problems(folder):
        raise ModelNotFound(f"LORA_MODULES: {repo_id} is not a peft LoRA adapter: {'; '.join(problems)}.")
    return folder


def baked_cache(settings: Settings) -> Path:
    """Where the image build bakes LORA_MODULES' adapters: a hub cache beside the model's manifest."""
    return Path(settings.worker.model_manifest).parent / "adapters"


def bake(settings: Settings, modules: list[Any], cache: Path) -> list[str]:
    """Download each hub adapter of `modules` into `cache` (the image build); a line per adapter."""
    lines = []
    for module in modules:
        if Path(module.path).is_dir():
            lines.append(f"{module.name}: the folder {module.path}, served as it is.")
        elif module.path.startswith(("/", "./", "../", "~")):
            lines.append(f"{module.name}: {module.path} is not a folder now: it must be one when the worker starts.")
        else:
            folder = download_adapter(settings, module.path, cache)
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20
            rank = adapter_rank(folder)
            lines.append(
                f"{module.name}: {module.path} at commit {folder.name[:12]} baked into {cache} "
                f"({size:.1f} MiB, rank {rank})."
            )
    return lines


def adapter_problems(folder: Path) -> list[str]:
    """What a copy of a peft adapter misses: its config, or its weights."""
    problems = [] if (folder / "adapter_config.json").is_file() else [f"no adapter_config.json in {folder}"]
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        problems.append(f"no adapter_model.safetensors in {folder}")
    return problems


def adapter_rank(folder: Path) -> int | None:
    """The adapter's rank (peft's adapter_config.json `r`), if it says."""
    try:
        rank = json.loads((folder / "adapter_config.json").read_text()).get("r")
    except (OSError, ValueError):
        return None
    return rank if isinstance(rank, int) else None


def resolve_modules(settings: Settings, modules: list[Any]) -> list[Any]:
    """LORA_MODULES (vLLM's module entries: name, path, ...) with each path a local folder."""
    return [dataclasses.replace(m, path=str(locate_adapter(settings, m.name, m.path))) for m in modules]
