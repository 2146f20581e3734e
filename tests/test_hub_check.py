"""The hub asked first (models/hub_check.py): a model named by MODEL_NAME (or TOKENIZER_NAME) that is not
baked, not a folder and not cached is checked on the hub before config.json is read from it or anything is
downloaded. Against the local hub of tests/hubserver.py (huggingface_hub's own client over HTTP): each
refusal names the variable and the fix, says whether a restart may help (retryable), and comes in seconds.
No engine, no network."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tpworker.config.settings import load_settings
from tpworker.errors import StartRefused
from tpworker.models import hub_check, resolve
from tpworker.startup.model_and_layout import plan_layout

from conftest import ROOT
from hubserver import GRANTED_TOKEN, INVALID_TOKEN, FakeHub

CONFIG = ROOT / "tests" / "fixtures" / "configs" / "smollm2-135m-instruct.json"
OTHER_TOKEN = "hf_someone_without_access"  # a token the hub knows, of an account without access
QUICK_S = 3.0  # every refusal but the hub that does not answer comes within this


def _repo(folder: Path, *files: str) -> Path:
    folder.mkdir(parents=True)
    for name in files:
        if name == "config.json":
            shutil.copy(CONFIG, folder / name)
        else:
            (folder / name).write_text("{}")
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    with FakeHub() as hub:
        model = _repo(root / "model", "config.json", "tokenizer_config.json")
        hub.add_repo("org/model", model, refs=("main", "v1"))
        hub.add_repo("org/gated", _repo(root / "gated", "config.json"), gated=True)
        hub.add_repo("org/private", _repo(root / "private", "config.json"), private=True)
        hub.add_repo("org/tok", _repo(root / "tok", "tokenizer_config.json"), refs=("main", "v1"))
        yield hub


@pytest.fixture(autouse=True)
def no_token(monkeypatch, tmp_path):
    """No HF_TOKEN, and no token saved by `hf auth login` (huggingface_hub looks under HF_HOME)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def settings(tmp_path: Path, endpoint: str, **env: str):
    return load_settings(
        {
            "MODEL_MANIFEST": str(tmp_path / "models" / "tpworker-manifest.json"),
            "BASE_PATH": str(tmp_path / "volume"),
            "HF_ENDPOINT": endpoint,
            **env,
        }
    )


def refusal(tmp_path: Path, endpoint: str, **env: str) -> tuple[StartRefused, float]:
    """The refusal of resolve.locate (the start path's look for the model) and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(StartRefused) as refused:
        resolve.locate(settings(tmp_path, endpoint, **env))
    return refused.value, time.monotonic() - start


def test_a_model_the_hub_has_passes_and_is_left_to_download(hub, tmp_path):
    for revision in ({}, {"MODEL_REVISION": "v1"}, {"MODEL_REVISION": hub.repos["org/model"].commit}):
        located = resolve.locate(settings(tmp_path, hub.url, MODEL_NAME="org/model", **revision))
        assert located.download and located.path_or_id == "org/model", revision


def test_a_model_that_is_not_on_the_hub_names_the_variable_and_the_token(hub, tmp_path, monkeypatch):
    error, took = refusal(tmp_path, hub.url, MODEL_NAME="org/nothing")
    assert str(error).startswith(
        f"MODEL_NAME='org/nothing' is not a model on the Hugging Face hub at {hub.url} (HF_ENDPOINT), or it is "
        "private and HF_TOKEN is not set (set it to a token that can read the model)."
    )
    assert not error.retryable and took < QUICK_S
    error, _ = refusal(tmp_path, hub.url, MODEL="org/nothing")  # vLLM's own name for it
    assert str(error).startswith("MODEL='org/nothing' is not a model on the Hugging Face hub")

    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    error, _ = refusal(tmp_path, hub.url, MODEL_NAME="org/nothing")
    assert "or it is private and the token in HF_TOKEN cannot see it" in str(error)
    assert OTHER_TOKEN not in str(error) and not error.retryable


def test_a_private_model_needs_a_token_that_can_see_it(hub, tmp_path, monkeypatch):
    error, _ = refusal(tmp_path, hub.url, MODEL_NAME="org/private")
    assert "MODEL_NAME='org/private' is not a model on the Hugging Face hub" in str(error)
    assert "HF_TOKEN is not set" in str(error) and not error.retryable
    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    assert resolve.locate(settings(tmp_path, hub.url, MODEL_NAME="org/private")).download


def test_a_revision_the_model_does_not_have_names_model_revision(hub, tmp_path):
    error, took = refusal(tmp_path, hub.url, MODEL_NAME="org/model", MODEL_REVISION="v9")
    assert str(error) == (
        f"MODEL_REVISION='v9' is not a branch, tag or commit of org/model on the Hugging Face hub at {hub.url} "
        "(HF_ENDPOINT). Set one that is (the repository's Files tab lists them), or unset MODEL_REVISION for its "
        "default branch."
    )
    assert not error.retryable and took < QUICK_S
    error, _ = refusal(tmp_path, hub.url, MODEL_NAME="org/model", REVISION="v9")
    assert str(error).startswith("REVISION='v9' is not a branch, tag or commit of org/model")


def test_a_gated_model_says_how_to_get_access(hub, tmp_path, monkeypatch):
    error, took = refusal(tmp_path, hub.url, MODEL_NAME="org/gated")
    assert str(error) == (
        f"MODEL_NAME='org/gated' is a gated model and HF_TOKEN is not set. Accept its terms at {hub.url}/org/gated "
        "with your Hugging Face account, then set HF_TOKEN to a token of that account (read access is enough)."
    )
    assert not error.retryable and took < QUICK_S

    monkeypatch.setenv("HF_TOKEN", OTHER_TOKEN)
    error, took = refusal(tmp_path, hub.url, MODEL_NAME="org/gated")
    assert str(error).startswith("MODEL_NAME='org/gated' is a gated model and the token in HF_TOKEN has no access")
    assert f"Accept its terms at {hub.url}/org/gated with that token's account" in str(error)
    assert "or set HF_TOKEN to a token of an account that has access" in str(error)
    assert OTHER_TOKEN not in str(error) and not error.retryable and took < QUICK_S

    monkeypatch.setenv("HF_TOKEN", GRANTED_TOKEN)
    assert resolve.locate(settings(tmp_path, hub.url, MODEL_NAME="org/gated")).download


def test_a_token_the_hub_does_not_know_is_named(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", INVALID_TOKEN)
    error, took = refusal(tmp_path, hub.url, MODEL_NAME="org/model")
    assert str(error).startswith(f"HF_TOKEN is not a token the Hugging Face hub at {hub.url} (HF_ENDPOINT) knows")
    assert "Set HF_TOKEN to a valid token" in str(error)
    assert INVALID_TOKEN not in str(error) and not error.retryable and took < QUICK_S


def test_the_start_is_refused_before_config_json_is_read_from_the_hub(hub, tmp_path):
    before = len(hub.requests)
    with pytest.raises(StartRefused, match=r"MODEL_NAME='org/gated' is a gated model and HF_TOKEN is not set"):
        plan_layout(settings(tmp_path, hub.url, MODEL_NAME="org/gated", CUDA_VISIBLE_DEVICES=""))
    asked = [(r.method, r.path) for r in hub.requests[before:]]
    commit = hub.repos["org/gated"].commit
    assert asked == [("GET", "/api/models/org/gated"), ("HEAD", f"/org/gated/resolve/{commit}/config.json")]


def test_a_hub_in_trouble_is_a_refusal_a_restart_may_fix(tmp_path):
    with FakeHub() as troubled:
        troubled.add_repo("org/model", _repo(tmp_path / "model", "config.json"))
        troubled.answer_status = 503
        error, took = refusal(tmp_path, troubled.url, MODEL_NAME="org/model")
    assert str(error) == (
        f"Cannot check MODEL_NAME='org/model' on the Hugging Face hub at {troubled.url} (HF_ENDPOINT): it answered "
        "503 Service Unavailable. A restart will try again."
    )
    assert error.retryable and took < QUICK_S


def test_an_unreachable_hub_is_a_refusal_a_restart_may_fix(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    error, took = refusal(tmp_path, address, MODEL_NAME="org/model")
    assert str(error).startswith(
        f"Cannot check MODEL_NAME='org/model' on the Hugging Face hub at {address} (HF_ENDPOINT): it cannot be reached"
    )
    assert str(error).endswith("A restart will try again.") and error.retryable and took < QUICK_S


def test_a_hub_that_does_not_answer_is_given_up_on_in_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_check, "TIMEOUT_S", 1.0)  # the default (5 s) would make this test slow
    with FakeHub() as silent:
        silent.stall_s = 30
        error, took = refusal(tmp_path, silent.url, MODEL_NAME="org/model")
    assert "(HF_ENDPOINT): no answer within 1 s. A restart will try again." in str(error)
    assert error.retryable and took < QUICK_S


def test_offline_the_hub_is_not_asked(hub, tmp_path):
    before = len(hub.requests)
    with pytest.raises(resolve.ModelNotFound, match=r"is not available offline .* and HF_HUB_OFFLINE is set"):
        resolve.locate(settings(tmp_path, hub.url, MODEL_NAME="org/nothing", HF_HUB_OFFLINE="1"))
    folder = _repo(tmp_path / "mine", "config.json")
    offline = settings(tmp_path, hub.url, MODEL_NAME=str(folder), TOKENIZER_NAME="org/nothing", HF_HUB_OFFLINE="1")
    assert resolve.locate(offline).path_or_id == str(folder)  # nor is the tokenizer asked about
    assert len(hub.requests) == before


def test_a_tokenizer_from_the_hub_is_checked_too(hub, tmp_path):
    folder = _repo(tmp_path / "mine", "config.json")
    error, _ = refusal(tmp_path, hub.url, MODEL_NAME=str(folder), TOKENIZER_NAME="org/nothing")
    assert str(error).startswith("TOKENIZER_NAME='org/nothing' is not a model on the Hugging Face hub")
    error, _ = refusal(tmp_path, hub.url, MODEL_NAME=str(folder), TOKENIZER_NAME="org/tok", TOKENIZER_REVISION="v9")
    assert str(error).startswith("TOKENIZER_REVISION='v9' is not a branch, tag or commit of org/tok")
    assert "unset TOKENIZER_REVISION" in str(error) and not error.retryable
    located = resolve.locate(settings(tmp_path, hub.url, MODEL_NAME=str(folder), TOKENIZER_NAME="org/tok"))
    assert located.path_or_id == str(folder)
