"""`tpworker download` against a local hub (tests/hubserver.py): huggingface_hub's own download code
over HTTP, the way the hub serves files. Which files are fetched, resuming, verification, the
manifest and the errors a user can act on. No engine, no network."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tpworker.models import download, manifest, snapshot

from conftest import ROOT
from hubserver import GRANTED_TOKEN, FakeHub

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONFIG = ROOT / "tests" / "fixtures" / "configs" / "smollm2-135m-instruct.json"


def _tiny_repo(folder: Path, **files: bytes | dict) -> Path:
    """A small model repository: the SmolLM2 config.json, a tokenizer config, and `files`
    (dicts are written as safetensors of those tensors, bytes as they are)."""
    folder.mkdir(parents=True)
    shutil.copy(CONFIG, folder / "config.json")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    for name, content in files.items():
        path = folder / name.replace("__", "/")  # original__x.pth -> original/x.pth
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            save_file({k: np.full(4, v, dtype=np.float32) for k, v in content.items()}, str(path))
        else:
            path.write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def hub(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with FakeHub() as hub:
        hub.add_repo(REPO, models[1])  # the default model, zero-padded for TP 1, 2, 4
        index = {
            "metadata": {},
            "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
        }
        hub.add_repo(
            "org/sharded",
            _tiny_repo(
                root / "sharded",
                **{
                    "model-00001-of-00002.safetensors": {"a": 1.0},
                    "model-00002-of-00002.safetensors": {"b": 2.0},
                    "model.safetensors.index.json": json.dumps(index).encode(),
                    "consolidated.safetensors": {"a": 1.0, "b": 2.0},  # the same weights again
                    "original__consolidated.00.pth": b"x" * 100,
                    "model.gguf": b"GGUF" + b"x" * 100,
                    "README.md": b"# a model",
                },
            ),
            refs=("main", "v1"),
        )
        hub.add_repo(
            "org/bin-only",
            _tiny_repo(root / "bin-only", **{"pytorch_model.bin": b"PK" + b"w" * 200, "training_args.bin": b"t" * 50}),
        )
        hub.add_repo("org/gguf-only", _tiny_repo(root / "gguf-only", **{"model.gguf": b"GGUF" + b"x" * 100}))
        hub.add_repo("org/gated", _tiny_repo(root / "gated", **{"model.safetensors": {"a": 1.0}}), gated=True)
        hub.add_repo(
            "org/huge",
            _tiny_repo(root / "huge", **{"model.safetensors": {"a": 1.0}}),
            advertised_sizes={"model.safetensors": 10**15},
        )
        yield hub


def _fetched(hub: FakeHub, repo: str, dest: Path, **kwargs) -> set[str]:
    result = download.fetch(repo, local_dir=dest, endpoint=hub.url, **kwargs)
    return {str(p.relative_to(result.path)) for p in result.path.rglob("*") if p.is_file() and ".cache" not in p.parts}


@pytest.mark.slow
def test_cli_downloads_resumes_verifies_plans_and_writes_the_manifest(hub, models, tmp_path):
    hub.cut_transfer_once(REPO, "model.safetensors", after_bytes=25_000_000)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_TOKEN", None)
    command = [sys.executable, "-m", "tpworker", "download", REPO, "--dest", str(tmp_path / "models")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Valid TP sizes for this model: 1, 2, 4, 12" in first.stdout
    # The connection dropped 25 MB into the weights; the rest came by a range request from where
    # the client had got to (it writes whole 10 MiB chunks).
    weights_gets = [r for r in hub.requests_to(r"^/lfs/") if r.method == "GET"]
    assert [r.headers.get("range") for r in weights_gets] == [None, "bytes=20971520-"]
    assert not any("authorization" in r.headers for r in weights_gets)  # no token to the CDN host

    folder = tmp_path / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (
            hashlib.sha256((folder / name).read_bytes()).digest()
            == hashlib.sha256((models[1] / name).read_bytes()).digest()
        ), name
    baked = manifest.read(tmp_path / "models" / manifest.FILE_NAME)
    assert (baked.model, baked.path, baked.served_name) == (REPO, folder, REPO)
    assert baked.commit == hub.repos[REPO].commit and baked.valid_tp_sizes == [1, 2, 4, 12]
    assert json.loads((tmp_path / "models" / manifest.FILE_NAME).read_text())["path"] == folder.name  # relative

    # Run again: everything is there, so no weights are fetched.
    before = len(hub.requests_to(r"^/lfs/"))
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(hub.requests_to(r"^/lfs/")) == before


def test_only_the_indexed_safetensors_and_the_side_files_are_fetched(hub, tmp_path):
    assert _fetched(hub, "org/sharded", tmp_path / "m") == {
        "config.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }


def test_pytorch_bin_weights_when_there_are_no_safetensors(hub, tmp_path):
    assert _fetched(hub, "org/bin-only", tmp_path / "m") == {
        "config.json",
        "tokenizer_config.json",
        "pytorch_model.bin",
    }


def test_a_pinned_revision_is_fetched_and_a_wrong_one_is_refused(hub, tmp_path):
    result = download.fetch("org/sharded", "v1", local_dir=tmp_path / "m", endpoint=hub.url)
    assert result.commit == hub.repos["org/sharded"].commit
    with pytest.raises(
        download.DownloadError, match=r"org/sharded has no revision 'v9'\. Give a branch, tag or commit"
    ) as refused:
        download.fetch("org/sharded", "v9", local_dir=tmp_path / "n", endpoint=hub.url)
    assert not refused.value.retryable  # a restart asks for the same revision


def test_a_repo_without_loadable_weights_is_refused(hub, tmp_path):
    with pytest.raises(download.DownloadError, match=r"no weights the worker can load.*GGUF"):
        download.fetch("org/gguf-only", local_dir=tmp_path / "m", endpoint=hub.url)
    assert not hub.requests_to(r"org/gguf-only/resolve/")  # refused before any file was fetched


def test_a_gated_repo_without_a_token_says_how_to_give_one(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token saved by `hf auth login`
    with pytest.raises(
        download.DownloadError,
        match=r"org/gated is a gated model and no Hugging Face token was "
        r"given.*set HF_TOKEN \(image build: --secret id=HF_TOKEN",
    ) as refused:
        download.fetch("org/gated", local_dir=tmp_path / "m", endpoint=hub.url)
    assert not refused.value.retryable
    monkeypatch.setenv("HF_TOKEN", "hf_someone_without_access")
    with pytest.raises(download.DownloadError, match=r"the Hugging Face token given has no access") as refused:
        download.fetch("org/gated", local_dir=tmp_path / "n", endpoint=hub.url)
    assert not refused.value.retryable
    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    assert "model.safetensors" in _fetched(hub, "org/gated", tmp_path / "o")


def test_an_unknown_repo_is_named(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(download.DownloadError, match=r"No model 'org/nothing' on the Hugging Face hub") as refused:
        download.fetch("org/nothing", local_dir=tmp_path / "m", endpoint=hub.url)
    assert not refused.value.retryable


def test_too_little_disk_is_refused_before_the_first_byte(hub, tmp_path):
    with pytest.raises(
        download.DownloadError, match=r"Not enough disk space: the model needs .* more at .* is free"
    ) as refused:
        download.fetch("org/huge", local_dir=tmp_path / "m", endpoint=hub.url)
    assert not hub.requests_to(r"org/huge/resolve/")
    assert not refused.value.retryable  # the disk is no larger after a restart


def test_a_disk_that_fills_up_is_explained():
    try:  # the kernel's own "No space left on device"
        with open("/dev/full", "wb") as f:
            f.write(b"x")
            f.flush()
    except OSError as e:
        full = e
    assert full.errno == errno.ENOSPC
    error = download.explain(full, "org/model", None, Path("/models"))
    assert "The disk filled up while downloading org/model into /models (a full disk)" in str(error)
    assert not error.retryable


def test_a_hub_in_trouble_or_out_of_reach_is_a_failure_a_restart_may_fix(tmp_path):
    with FakeHub() as troubled:
        troubled.add_repo("org/tiny", _tiny_repo(tmp_path / "tiny", **{"model.safetensors": {"a": 1.0}}))
        troubled.answer_status = 502
        with pytest.raises(
            download.DownloadError,
            match=r"Cannot download org/tiny: the Hugging Face hub could not "
            r"be reached or failed \(.*502.*\)\. Run it again to resume",
        ) as refused:
            download.fetch("org/tiny", local_dir=tmp_path / "m", endpoint=troubled.url)
        assert refused.value.retryable
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(download.DownloadError, match=r"could not be reached or failed \(ConnectError") as refused:
        download.fetch("org/tiny", local_dir=tmp_path / "n", endpoint=address)
    assert refused.value.retryable


def test_incomplete_or_fake_weights_are_found(tmp_path):
    folder = _tiny_repo(
        tmp_path / "m",
        **{
            "model-00001-of-00002.safetensors": {"a": 1.0},
            "model.safetensors.index.json": json.dumps(
                {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            ).encode(),
        },
    )
    assert snapshot.folder_problems(folder) == ["model-00002-of-00002.safetensors is missing"]
    (folder / "model-00002-of-00002.safetensors").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:ab"
    )
    assert snapshot.folder_problems(folder) == [
        "model-00002-of-00002.safetensors is empty or a Git LFS pointer, not weights"
    ]
    save_file({"c": np.zeros(2, dtype=np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    assert snapshot.folder_problems(folder) == ["1 tensors of model.safetensors.index.json are in no file (e.g. b)"]
    save_file({"b": np.zeros(2, dtype=np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    assert snapshot.folder_problems(folder) == []
    data = (folder / "model-00002-of-00002.safetensors").read_bytes()
    (folder / "model-00002-of-00002.safetensors").write_bytes(data[:20])  # truncated
    assert "is not a readable safetensors file" in snapshot.folder_problems(folder)[0]
    assert snapshot.folder_problems(folder, {"model-00002-of-00002.safetensors": len(data)}) == [
        f"model-00002-of-00002.safetensors has 20 bytes, the hub lists {len(data)}"
    ]
