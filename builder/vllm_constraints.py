"""Print pip constraints that hold vLLM and its direct dependencies at the versions installed.

The image adds the worker and runpod on top of the official vLLM image; installing them with these
constraints makes any requirement that would move a package vLLM depends on fail the build instead
of silently changing what vLLM runs with (NOTES: runpod 1.10.1+ would need a newer fastapi)."""

from importlib import metadata

from packaging.requirements import Requirement


def main() -> None:
    names = {"vllm"}
    for text in metadata.requires("vllm") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(requirement.name)
    for name in sorted(names):
        try:
            print(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:  # a dependency for another platform
            pass


if __name__ == "__main__":
    main()
