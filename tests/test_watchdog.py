"""The watchdog's verdict on an engine, tested on a stand-in with the engine's health interface (no
vLLM: the end-to-end faults are in test_faults.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tpworker.serving.watchdog import FIRST_STEP_GRACE_S, engine_problem


@dataclass
class EngineHealth:
    stalled: float = 0.0
    has_stepped: bool = True
    dead: bool = False
    lost: list[str] = field(default_factory=list)
    in_flight: int = 1

    def lost_processes(self) -> list[str]:
        return self.lost

    def seconds_without_progress(self) -> float:
        return self.stalled

    def unfinished_requests(self) -> int:
        return self.in_flight


def test_a_healthy_engine_has_no_problem():
    assert engine_problem(EngineHealth(stalled=2), stall_timeout=6) is None


def test_no_step_for_longer_than_the_timeout_is_a_stall():
    problem = engine_problem(EngineHealth(stalled=7), stall_timeout=6)
    assert problem == "the engine made no progress for 7 s with 1 request(s) in flight (ENGINE_STALL_TIMEOUT=6)"


def test_the_first_step_may_take_the_grace_period():
    first = EngineHealth(stalled=30, has_stepped=False)
    assert engine_problem(first, stall_timeout=6) is None  # compiling, not hung
    first.stalled = FIRST_STEP_GRACE_S + 1
    problem = engine_problem(first, stall_timeout=6)
    assert problem and f"and {FIRST_STEP_GRACE_S} s for its first step" in problem
    assert engine_problem(EngineHealth(stalled=200, has_stepped=False), stall_timeout=300) is None


def test_a_lost_process_or_a_dead_engine_comes_first():
    assert engine_problem(EngineHealth(lost=["VLLM::Worker_TP1 (pid 7)"]), 6) == "VLLM::Worker_TP1 (pid 7) exited"
    assert engine_problem(EngineHealth(dead=True, stalled=100), 6) == "vLLM reports the engine dead"
