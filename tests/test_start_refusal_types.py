"""The refusals at start that name their own type (each a StartRefused a restart cannot fix, so that on RunPod
the worker stays up answering jobs with it): a model manifest that cannot be read, and `tpworker cluster`'s
refusals. Fast: no engine, no Ray started."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from tpworker.cluster import command
from tpworker.cluster.command import ClusterError
from tpworker.errors import StartRefused
from tpworker.models import manifest
from tpworker.models.manifest import ManifestError


@pytest.mark.parametrize(
    ("text", "words"),
    [("{not json", "cannot be read: Expecting property name"), (json.dumps({"format": 99}), "unknown format")],
)
def test_a_manifest_that_cannot_be_read_is_a_manifest_error(tmp_path, text, words):
    file = tmp_path / "tpworker-manifest.json"
    file.write_text(text)
    with pytest.raises(ManifestError, match=words) as refused:
        manifest.read(file)
    assert isinstance(refused.value, StartRefused) and not refused.value.retryable


def test_tpworker_cluster_without_ray_is_a_cluster_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no `ray` beside it
    monkeypatch.setattr(command.shutil, "which", lambda name: None)
    with pytest.raises(ClusterError, match=r"Ray is not installed: pip install 'tpworker\[ray\]'") as refused:
        command.ray_executable()
    assert not refused.value.retryable


def test_tpworker_cluster_head_refuses_the_mp_backend(monkeypatch):
    monkeypatch.setenv("DISTRIBUTED_EXECUTOR_BACKEND", "mp")
    with pytest.raises(ClusterError, match="DISTRIBUTED_EXECUTOR_BACKEND=mp keeps every rank on one node"):
        command.head(argparse.Namespace())
