"""vLLM's compile cache on the network volume, so that the next worker skips the compilation.

vLLM keeps its torch.compile artifacts under VLLM_CACHE_ROOT (torch's inductor and Triton keep theirs
under TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR); in a container they are lost with it. With a
volume mounted at BASE_PATH the three live there, in a folder named by everything a compiled kernel
depends on that a worker of another endpoint may have differently: vLLM's release, the model (its
path or id and revision), the TP and PP sizes, and the device (the GPU's name, or the CPU's model and
vector extensions). vLLM's own cache key covers most of these too; the folder makes sure no worker
ever reads another kind's entry, and the volume's folders say what they hold. A variable the user set
is left as it is.

On CPU vLLM 0.32's ahead-of-time artifacts (VLLM_USE_AOT_COMPILE, on by default with torch >= 2.10)
are saved but fail to load ("'function' object has no attribute 'finalize_loading'"), so every start
would compile again; without them inductor's own cache serves the next start (results/start/figures.md).
The worker turns them off there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from tpworker import timeline
from tpworker.config.settings import Settings
from tpworker.planning import hardware
from tpworker.startup.model_and_layout import Layout

log = logging.getLogger(__name__)

VOLUME_FOLDER = "tpworker-compile-cache"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:60]


def device_kind(layout: Layout) -> str:
    if layout.gpus:
        return _slug(layout.gpus[0].name)
    return _slug(f"cpu {hardware.cpu_model()} {' '.join(hardware.cpu_vector_extensions())}")


def cache_folder(settings: Settings, layout: Layout, vllm_version: str) -> Path:
    """BASE_PATH/tpworker-compile-cache/vllm-<version>/<model>-<hash>/tp<N>-pp<M>-<device>."""
    model = layout.model.path_or_id
    identity = f"{model}@{settings.worker.revision or ''}"
    name = f"{_slug(layout.model.served_name)}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    parallel = layout.parallel
    shape = f"tp{parallel.tensor_parallel_size}-pp{parallel.pipeline_parallel_size}-{device_kind(layout)}"
    return Path(settings.worker.base_path) / VOLUME_FOLDER / f"vllm-{_slug(vllm_version)}" / name / shape


def compile_cache_environment(settings: Settings, layout: Layout, vllm_version: str) -> dict[str, str]:
    """The variables that put the compile caches on the volume, for vLLM's processes; {} when there is
    no writable volume at BASE_PATH or the user chose VLLM_CACHE_ROOT."""
    if "VLLM_CACHE_ROOT" in settings.compile_cache_environ:
        log.info("Compile cache: VLLM_CACHE_ROOT=%s (set by you).", settings.compile_cache_environ["VLLM_CACHE_ROOT"])
        return {}
    if not Path(settings.worker.base_path).is_dir():
        return {}  # no network volume: the caches live and die with the container
    folder = cache_folder(settings, layout, vllm_version)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable by this user")
    except OSError as e:
        log.warning("Compile cache: cannot write to the network volume (%s); it stays in the container.", e)
        return {}
    found = "reused" if any(folder.iterdir()) else "new"
    log.info("Compile cache (%s): %s, on the network volume at BASE_PATH.", found, folder)
    timeline.mark("compile cache found" if found == "reused" else "compile cache created", str(folder))
    wanted = {
        "VLLM_CACHE_ROOT": str(folder),
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "TRITON_CACHE_DIR": str(folder / "triton"),
    }
    if not layout.gpus:
        wanted["VLLM_USE_AOT_COMPILE"] = "0"  # its artifacts do not load on CPU (above)
    return {name: value for name, value in wanted.items() if name not in settings.compile_cache_environ}
