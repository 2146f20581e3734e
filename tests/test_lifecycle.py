"""The worker's lifecycle (serving/lifecycle.py) on its own: which changes it allows, what a job is told in
each state, that every change is logged, and that a change asked for from another thread is applied in the
thread of the event loop that owns it."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from tpworker.serving.job_errors import JobError
from tpworker.serving.lifecycle import TRANSITIONS, Lifecycle, State, TransitionError


def test_a_worker_goes_from_starting_to_stopped_and_each_change_is_logged(caplog):
    caplog.set_level(logging.INFO, "tpworker.serving.lifecycle")
    life = Lifecycle()
    seen = []
    life.on_change(lambda state, error: seen.append(state))
    for state in (State.WARMING_UP, State.SERVING, State.DRAINING, State.STOPPED):
        life.post(state, f"to {state.value}")
    assert seen == [State.WARMING_UP, State.SERVING, State.DRAINING, State.STOPPED]
    assert "Worker state: starting -> warming up: to warming up" in caplog.text
    assert "Worker state: draining -> stopped: to stopped" in caplog.text


def test_jobs_run_until_the_worker_stops_and_are_then_told_why():
    life = Lifecycle()
    for state in (State.WARMING_UP, State.SERVING, State.DRAINING):
        life.post(state, "on")
        assert life.refusal() is None, state  # a job taken while draining still runs
    life.post(State.STOPPED, "the engine failed", JobError("The engine failed.", code=503))
    assert life.refusal().message == "The engine failed." and life.refusal().code == 503


def test_a_stopped_worker_without_a_cause_still_refuses_with_a_503():
    life = Lifecycle()
    life.post(State.STOPPED, "shut down")
    assert life.refusal().code == 503 and "stopped" in life.refusal().message


def test_a_refused_start_answers_every_job_with_its_cause():
    life = Lifecycle()
    life.post(State.REFUSED, "bad variable", JobError("The worker cannot start: MAX_N='x' is not valid.", code=503))
    assert "MAX_N" in life.refusal().message
    with pytest.raises(TransitionError):
        life.post(State.SERVING, "a refused worker never serves")


@pytest.mark.parametrize("state", [s for s in State if s is not State.STOPPED])
def test_only_the_listed_changes_are_allowed(state):
    for target in State:
        life = Lifecycle()
        life.state = state
        if target is state:
            life.post(target, "no change")  # the same state: nothing happens
        elif target in TRANSITIONS[state]:
            life.post(target, "allowed")
            assert life.state is target
        else:
            with pytest.raises(TransitionError):
                life.post(target, "not allowed")


def test_stopped_is_final_and_a_late_change_is_ignored():
    life = Lifecycle()
    life.post(State.STOPPED, "failed", JobError("x", code=503))
    life.post(State.DRAINING, "SIGTERM after the failure")  # ignored, not an error
    assert life.state is State.STOPPED and life.refusal().message == "x"


def test_a_change_from_another_thread_is_applied_in_the_owning_loop():
    life = Lifecycle()
    applied_in = []
    life.on_change(lambda state, error: applied_in.append(threading.current_thread()))

    async def scenario():
        life.bind(asyncio.get_running_loop())
        thread = threading.Thread(target=life.post, args=(State.SERVING, "from a thread"))
        thread.start()
        thread.join()
        assert life.state is State.STARTING  # posted, not yet applied: the loop has not run since
        await asyncio.sleep(0)
        return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert life.state is State.SERVING and applied_in == [loop_thread]


def test_a_thread_can_wait_for_a_state():
    life = Lifecycle()
    threading.Timer(0.05, life.post, args=(State.SERVING, "ready")).start()
    assert life.wait_for({State.SERVING}, timeout=5)
    assert not life.wait_for({State.STOPPED}, timeout=0.05)
