"""The internals of vLLM and the RunPod SDK the worker depends on, listed (vllm_internals, runpod_internals)
and checked against the installed releases (`python -m tpworker.contract`, tests/test_internals_contract.py).

This package names those internals as strings and imports them only to check them: the worker's code that
uses them stays in vllm_bridge/ and serving/jobloop.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tpworker.contract.seam import Seam, check


@dataclass(frozen=True)
class Finding:
    seam: Seam
    problems: list[str]


def all_seams() -> tuple[Seam, ...]:
    from tpworker.contract.runpod_internals import RUNPOD_SEAMS
    from tpworker.contract.vllm_internals import VLLM_SEAMS

    return VLLM_SEAMS + RUNPOD_SEAMS


def check_all(seams: Iterable[Seam] | None = None) -> list[Finding]:
    return [Finding(seam, check(seam)) for seam in (all_seams() if seams is None else seams)]
