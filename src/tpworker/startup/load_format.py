"""LOAD_FORMAT, checked before the engine loads: a loader that speeds up a cold start is only worth
choosing if it can run here, and vLLM finds out minutes later, inside each rank.

- runai_streamer: Run:ai's streamer reads safetensors files with many threads at once (local disk,
  S3, GCS); with MODEL_LOADER_EXTRA_CONFIG='{"distributed": true}' the ranks of a TP/PP group read
  different files and share them, instead of each reading the whole checkpoint.
- fastsafetensors: reads safetensors files straight into GPU memory (GPUDirect Storage where the
  machine has it), one part per rank.
- sharded_state, runai_streamer_sharded: a checkpoint saved already split for one TP/PP layout (one
  file set per rank, vLLM's save_sharded_state), which each rank reads alone.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

from tpworker.startup.model_and_layout import Layout, StartError

log = logging.getLogger(__name__)

# The loader -> (the module it imports, the package that provides it).
PACKAGES = {
    "runai_streamer": ("runai_model_streamer", "runai-model-streamer"),
    "runai_streamer_sharded": ("runai_model_streamer", "runai-model-streamer"),
    "fastsafetensors": ("fastsafetensors", "fastsafetensors"),
}
SHARDED = ("sharded_state", "runai_streamer_sharded")
# vLLM's names of a sharded checkpoint's files (ShardedStateLoader's default patterns).
TP_ONLY = re.compile(r"model-rank-(\d+)-part-\d+\.safetensors")
PP_AND_TP = re.compile(r"model-pp-(\d+)-tp-(\d+)-part-\d+\.safetensors")


def check_load_format(args: dict[str, Any], layout: Layout) -> None:
    """Raises StartError when the chosen loader cannot run here or with this layout; logs advice."""
    chosen = args.get("load_format") or "auto"
    extra = args.get("model_loader_extra_config") or {}
    ranks = layout.parallel.tensor_parallel_size * layout.parallel.pipeline_parallel_size
    if chosen in PACKAGES and importlib.util.find_spec(PACKAGES[chosen][0]) is None:
        raise StartError(
            f"LOAD_FORMAT={chosen} needs the Python package {PACKAGES[chosen][1]}, which is not installed in this "
            f"image. Add `pip install {PACKAGES[chosen][1]}` to the image, or unset LOAD_FORMAT."
        )
    if chosen == "fastsafetensors" and not layout.gpus:
        raise StartError("LOAD_FORMAT=fastsafetensors loads into GPU memory, and this machine has no GPU. Unset it.")
    if "distributed" in extra:
        if chosen != "runai_streamer":
            raise StartError(
                'MODEL_LOADER_EXTRA_CONFIG: "distributed" is an option of LOAD_FORMAT=runai_streamer only '
                f"(LOAD_FORMAT is {chosen}). Set LOAD_FORMAT=runai_streamer or remove the option."
            )
        if extra["distributed"] and ranks == 1:
            log.warning('MODEL_LOADER_EXTRA_CONFIG: "distributed" does nothing with one rank.')
    elif chosen == "runai_streamer" and ranks > 1:
        log.info(
            "LOAD_FORMAT=runai_streamer with %d ranks: MODEL_LOADER_EXTRA_CONFIG='{\"distributed\": true}' has "
            "them read different files and share them instead of each reading the whole checkpoint.",
            ranks,
        )
    if chosen in SHARDED and "pattern" not in extra:
        _check_sharded(chosen, Path(layout.model.path_or_id), layout)


def _check_sharded(chosen: str, folder: Path, layout: Layout) -> None:
    """A sharded checkpoint holds one file set per rank of the layout it was saved for: that layout must
    be this one."""
    if not folder.is_dir():
        return  # streamed from object storage: vLLM lists it
    names = [p.name for p in folder.iterdir()]
    tp, pp = layout.parallel.tensor_parallel_size, layout.parallel.pipeline_parallel_size
    tp_only = {int(m[1]) for n in names if (m := TP_ONLY.fullmatch(n))}
    both = {(int(m[1]), int(m[2])) for n in names if (m := PP_AND_TP.fullmatch(n))}
    if both:
        saved_pp, saved_tp = max(p for p, _ in both) + 1, max(t for _, t in both) + 1
    elif tp_only:
        saved_pp, saved_tp = 1, max(tp_only) + 1
    else:
        raise StartError(
            f"LOAD_FORMAT={chosen}: {folder} holds no sharded checkpoint (files named model-rank-<r>-part-<n>"
            ".safetensors, as vLLM's save_sharded_state writes them). Unset LOAD_FORMAT to load it as it is."
        )
    if (saved_tp, saved_pp) != (tp, pp):
        raise StartError(
            f"LOAD_FORMAT={chosen}: the checkpoint in {folder} was saved for TP={saved_tp} x PP={saved_pp}, and "
            f"this worker runs TP={tp} x PP={pp}. Set TENSOR_PARALLEL_SIZE={saved_tp} and PIPELINE_PARALLEL_SIZE="
            f"{saved_pp}, or save the checkpoint again for this layout."
        )
