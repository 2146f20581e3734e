"""The variables vLLM reads are set once per start, before anything that imports vLLM begins (the structured
output probe's fork server, the engine and the OpenAI layer's build beside its start), and stay set for the
engine's life: no thread sees them swapped in or out while it imports vLLM. Closing the worker puts back
what was there. The engine and the worker are stand-ins here (what is checked is the order of the start)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from tpworker.serving import structured_check
from tpworker.serving import worker as worker_module
from tpworker.startup import start

VARIABLE = "TPWORKER_TEST_SET_FOR_VLLM"


@pytest.fixture
def plan():
    return SimpleNamespace(
        environment={VARIABLE: "set", "HF_HUB_OFFLINE": "1"},
        openai_options={},
        model="m",
        served_names=["m"],
        start_estimate=None,
    )


@pytest.fixture
def seen(monkeypatch):
    """What each step of the start saw of the variable."""
    seen: dict[str, str | None] = {}
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(structured_check, "start_fork_server", lambda: seen.update(fork_server=os.getenv(VARIABLE)))
    closed = SimpleNamespace(close=lambda: seen.update(closed=os.getenv(VARIABLE)))
    monkeypatch.setattr(worker_module, "build_worker", lambda *args: closed)
    monkeypatch.setattr(start, "_log_start_time", lambda *args: None)
    return seen


def test_set_before_the_fork_server_and_the_engine_and_restored_when_the_worker_closes(plan, seen, monkeypatch):
    def start_engine(settings, plan, beside_start):
        seen["engine"] = os.getenv(VARIABLE)
        return SimpleNamespace()

    monkeypatch.setattr(start, "start_engine", start_engine)
    started = start.start_worker(SimpleNamespace(shown=lambda: {}, worker=None), plan, watched=False)
    assert seen == {"fork_server": "set", "engine": "set"}
    assert os.getenv(VARIABLE) == "set" and os.getenv("HF_HUB_OFFLINE") == "1"  # for the engine's whole life
    started.close()
    assert seen["closed"] == "set"  # the worker closed with them still set
    assert VARIABLE not in os.environ and os.getenv("HF_HUB_OFFLINE") == "0"


def test_a_start_that_fails_puts_them_back(plan, seen, monkeypatch):
    def start_engine(settings, plan, beside_start):
        raise RuntimeError("vLLM refused")

    monkeypatch.setattr(start, "start_engine", start_engine)
    with pytest.raises(RuntimeError, match="vLLM refused"):
        start.start_worker(SimpleNamespace(shown=lambda: {}, worker=None), plan, watched=False)
    assert VARIABLE not in os.environ and os.getenv("HF_HUB_OFFLINE") == "0"


def test_the_engine_no_longer_takes_an_environment_to_swap():
    import inspect

    from tpworker.serving.engine import Engine

    assert list(inspect.signature(Engine.start).parameters) == ["engine_args", "beside_start"]
