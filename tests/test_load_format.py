"""LOAD_FORMAT checked at start (startup/load_format.py): a loader that cannot run here, or an option or a
sharded checkpoint that does not fit this layout, is refused by name before anything loads. (Plans only.)"""

from __future__ import annotations

import logging
import os

import pytest

from tpworker.config.settings import load_settings
from tpworker.startup.model_and_layout import StartError
from tpworker.startup.plan import plan_start

from conftest import ENGINE_ENV


def plan(models, **env: str):
    return plan_start(
        load_settings({**os.environ, **ENGINE_ENV, "MODEL_NAME": str(models[1]), "CUDA_VISIBLE_DEVICES": "", **env})
    )


@pytest.mark.parametrize("loader", ["runai_streamer", "fastsafetensors"])
def test_a_loader_whose_package_is_missing_is_refused_with_the_install_to_add(models, loader):
    # Neither package is in this environment's lock (the CPU build); the refusal says what to install.
    with pytest.raises(StartError, match=f"LOAD_FORMAT={loader} needs the Python package .*pip install"):
        plan(models, LOAD_FORMAT=loader)


def test_the_distributed_option_belongs_to_the_runai_streamer(models):
    with pytest.raises(StartError, match='"distributed" is an option of LOAD_FORMAT=runai_streamer only'):
        plan(models, MODEL_LOADER_EXTRA_CONFIG='{"distributed": true}')


def test_a_sharded_checkpoint_must_have_been_saved_for_this_layout(models, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    for item in models[1].iterdir():  # the model's config and tokenizer, with per-rank weight files
        if not item.name.endswith(".safetensors"):
            (folder / item.name).symlink_to(item)
    with pytest.raises(StartError, match="holds no sharded checkpoint"):
        plan(models, MODEL_NAME=str(folder), LOAD_FORMAT="sharded_state")
    for rank in (0, 1):
        (folder / f"model-rank-{rank}-part-0.safetensors").write_bytes(b"")
    with pytest.raises(StartError, match="saved for TP=2 x PP=1, and this worker runs TP=1 x PP=1"):
        plan(models, MODEL_NAME=str(folder), LOAD_FORMAT="sharded_state", TENSOR_PARALLEL_SIZE="1")
    assert plan(models, MODEL_NAME=str(folder), LOAD_FORMAT="sharded_state", TENSOR_PARALLEL_SIZE="2")


def test_the_default_loader_needs_no_check(models, caplog):
    with caplog.at_level(logging.INFO):
        assert plan(models).engine_args.get("load_format") in (None, "auto")
    assert "LOAD_FORMAT" not in caplog.text
