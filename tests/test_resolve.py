"""Where the worker's model comes from at start (resolve.py): the baked manifest, a folder, the
network volume's hub cache in RunPod's layout (made here by huggingface_hub itself, downloading
from the local hub of tests/hubserver.py), a download into the volume, or a clear error."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants, snapshot_download
from safetensors.numpy import save_file

from tpworker.config.settings import load_settings
from tpworker.models import download, resolve
from tpworker.planning import hardware
from tpworker.startup.engine_args import served_model_names
from tpworker.startup.model_and_layout import StartError, choose_model
from tpworker.startup.plan import plan_start

from conftest import ROOT
from hubserver import FakeHub

REPO = "HuggingFaceTB/Tiny-Model"
CONFIG = ROOT / "tests" / "fixtures" / "configs" / "smollm2-135m-instruct.json"


def _repo(folder: Path, value: float = 1.0) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(CONFIG, folder / "config.json")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    save_file({"w": np.full(8, value, dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with FakeHub() as hub:
        hub.add_repo(REPO, _repo(root / "tiny"), refs=("main", "v2"))
        # RunPod's model cache names repositories in lower case.
        hub.add_repo(REPO.lower(), _repo(root / "tiny-lower", value=2.0))
        hub.add_repo("org/tok", _repo(root / "tok"))
        hub.add_repo("org/other", _repo(root / "other"))
        yield hub


def settings(tmp_path: Path, **env: str):
    return load_settings(
        {
            "MODEL_MANIFEST": str(tmp_path / "models" / "tpworker-manifest.json"),
            "BASE_PATH": str(tmp_path / "volume"),
            **env,
        }
    )


@pytest.fixture
def baked(hub, tmp_path):
    download.download_model(REPO, tmp_path / "models", tokenizer="org/tok", endpoint=hub.url)
    return tmp_path / "models"


def test_the_baked_model_is_served_offline_with_its_tokenizer(baked, tmp_path):
    for env in ({}, {"MODEL_NAME": REPO}, {"MODEL_NAME": REPO, "MODEL_REVISION": "main"}):
        located = resolve.locate(settings(tmp_path, **env))
        assert located.path_or_id == str(baked / "HuggingFaceTB--Tiny-Model"), env
        assert located.served_name == REPO and located.offline and not located.download
        assert located.tokenizer == str(baked / "tokenizer--org--tok")
        assert "is baked into the image (MODEL_MANIFEST=" in located.why


def test_the_served_name_is_decided_in_one_place(baked, tmp_path):
    located = resolve.locate(settings(tmp_path))
    assert served_model_names(settings(tmp_path), located, {}) == [REPO]  # the manifest's
    assert served_model_names(settings(tmp_path), located, {"served_model_name": ["mine"]}) == ["mine"]  # vLLM's
    override = settings(tmp_path, OPENAI_SERVED_MODEL_NAME_OVERRIDE="tiny")  # worker-vllm's, first
    assert served_model_names(override, located, {"served_model_name": ["mine"]}) == ["tiny"]


def test_another_model_than_the_baked_one_is_looked_for_elsewhere(hub, baked, tmp_path):
    located = resolve.locate(settings(tmp_path, MODEL_NAME="org/other", HF_ENDPOINT=hub.url))
    assert located.download and located.path_or_id == "org/other"
    with pytest.raises(
        resolve.ModelNotFound,
        match=r"MODEL_NAME='org/other' is not available offline \(the image "
        r"holds HuggingFaceTB/Tiny-Model; not in .*volume/huggingface-cache/hub\) and HF_HUB_OFFLINE is set",
    ):
        resolve.locate(settings(tmp_path, MODEL_NAME="org/other", HF_HUB_OFFLINE="1"))
    assert resolve.locate(settings(tmp_path, MODEL_NAME=REPO, MODEL_REVISION="v2", HF_ENDPOINT=hub.url)).download
    with pytest.raises(
        resolve.ModelNotFound, match=r"MODEL_REVISION='v2', but the image holds HuggingFaceTB/Tiny-Model at main"
    ):
        resolve.locate(settings(tmp_path, MODEL_REVISION="v2"))


def test_runpods_model_cache_is_found_whatever_the_case_of_its_names(hub, tmp_path):
    cache = tmp_path / "volume" / "huggingface-cache" / "hub"
    path = Path(snapshot_download(REPO.lower(), cache_dir=cache, endpoint=hub.url))
    commit = hub.repos[REPO.lower()].commit
    # huggingface_hub's own cache layout: refs/main -> commit, snapshot files linking to blobs.
    repo_dir = cache / "models--huggingfacetb--tiny-model"
    assert (repo_dir / "refs" / "main").read_text() == commit and path == repo_dir / "snapshots" / commit
    assert (path / "model.safetensors").is_symlink()

    for revision in (None, "main", commit, commit[:12]):
        env = {"MODEL_NAME": REPO, **({"MODEL_REVISION": revision} if revision else {})}
        located = resolve.locate(settings(tmp_path, **env))
        assert located.path_or_id == str(path), revision
        assert located.offline and not located.download and located.served_name == REPO
        assert "is in the network volume's cache" in located.why
    assert resolve.locate(settings(tmp_path, MODEL_NAME=REPO, MODEL_REVISION="v2", HF_ENDPOINT=hub.url)).download


def test_an_incomplete_cached_copy_is_not_served(hub, tmp_path, caplog):
    cache = tmp_path / "volume" / "huggingface-cache" / "hub"
    path = Path(snapshot_download(REPO, cache_dir=cache, endpoint=hub.url))
    blob = (path / "model.safetensors").resolve()
    blob.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # a pointer, not the weights
    assert resolve.locate(settings(tmp_path, MODEL_NAME=REPO, HF_ENDPOINT=hub.url)).download
    assert "Skipping the cached copy" in caplog.text and "Git LFS pointer" in caplog.text
    blob.unlink()  # the blob went missing: huggingface_hub's scan reports it
    assert resolve.locate(settings(tmp_path, MODEL_NAME=REPO, HF_ENDPOINT=hub.url)).download
    assert "In the hub cache" in caplog.text


def test_a_volume_the_worker_may_not_read_is_passed_over_with_a_warning(hub, tmp_path):
    """As in the image: the worker's user is not root, and the volume's cache may not let it in. Real
    permissions: run as root, the look happens in a forked process turned into another user (nobody);
    otherwise the cache is made unreadable to this one."""
    from huggingface_hub import CacheNotFound, scan_cache_dir  # noqa: F401  (imported before the fork: the
    # other user may not read this Python's files)

    cache = tmp_path / "volume" / "huggingface-cache" / "hub"
    snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger(resolve.__name__).addHandler(handler)
    try:
        if os.getuid() == 0:
            tmp_path.chmod(0o700)
            found, records = _as_another_user(lambda: resolve.find_cached(cache, REPO, None), records)
        else:
            cache.chmod(0)
            found = resolve.find_cached(cache, REPO, None)
    finally:
        cache.chmod(0o755)
        logging.getLogger(resolve.__name__).removeHandler(handler)
    assert found is None
    assert any("Cannot read the network volume's hub cache" in r and "Permission denied" in r for r in records)


def _as_another_user(look, records: list[str]):
    """`look()` in a forked child running as nobody: (its result as a string or None, the records it logged)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            found = look()
            os.write(write_end, json.dumps([None if found is None else str(found), records]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    found, logged = json.loads(data)
    return found, logged


def test_a_model_not_found_locally_is_downloaded_into_the_volume_and_found_there_next_time(hub, tmp_path):
    (tmp_path / "volume").mkdir()
    first = settings(tmp_path, MODEL_NAME=REPO, HF_ENDPOINT=hub.url)
    located = resolve.locate(first)
    assert located.download and not located.offline
    fetched = resolve.download(first, located)
    cache = tmp_path / "volume" / "huggingface-cache" / "hub"
    assert Path(fetched.path_or_id).is_relative_to(cache / "models--HuggingFaceTB--Tiny-Model" / "snapshots")
    assert fetched.offline and not fetched.download
    again = resolve.locate(settings(tmp_path, MODEL_NAME=REPO))
    assert again.path_or_id == fetched.path_or_id and not again.download


def test_without_a_volume_the_download_goes_to_the_containers_cache(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "container-cache"))
    chosen = settings(tmp_path, MODEL_NAME=REPO, HF_ENDPOINT=hub.url)  # BASE_PATH does not exist
    fetched = resolve.download(chosen, resolve.locate(chosen))
    assert Path(fetched.path_or_id).is_relative_to(tmp_path / "container-cache")
    assert not (tmp_path / "volume").exists()


def test_folders_and_paths(tmp_path):
    folder = _repo(tmp_path / "mine")
    located = resolve.locate(settings(tmp_path, MODEL_NAME=str(folder)))
    assert located.path_or_id == str(folder) and not located.download
    with pytest.raises(resolve.ModelNotFound, match=r"MODEL_NAME='/nowhere/model' is not a folder on this machine"):
        resolve.locate(settings(tmp_path, MODEL_NAME="/nowhere/model"))
    assert resolve.locate(settings(tmp_path)) is None  # nothing named, nothing baked
    gpu = hardware.Gpu(0, "NVIDIA H100", 80 * 1024**3)
    with pytest.raises(
        StartError, match=r"MODEL_NAME is not set and no model is baked into the image \(no manifest at "
    ):
        choose_model(settings(tmp_path), [gpu])


def test_the_start_plan_of_a_baked_model(baked, tmp_path):
    plan = plan_start(settings(tmp_path, MODEL_REVISION="main"))
    args = plan.engine_args
    assert args["model"] == str(baked / "HuggingFaceTB--Tiny-Model")
    assert args["tokenizer"] == str(baked / "tokenizer--org--tok")
    assert args["served_model_name"] == [REPO] and "revision" not in args
    assert plan.environment["HF_HUB_OFFLINE"] == "1"
