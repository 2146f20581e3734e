"""vLLM's compile cache on the network volume (startup/compile_cache.py): where it goes, what keeps
workers of other kinds apart, and a second start that loads the compiled graphs instead of compiling."""

from __future__ import annotations

import json
import os
import re
import tempfile

import pytest
from test_handler_cli import CHAT_JOB, run_handler

from tpworker.config.settings import COMPILE_CACHE_VARIABLES, load_settings
from tpworker.startup.compile_cache import cache_folder, compile_cache_environment
from tpworker.startup.model_and_layout import plan_layout
from tpworker.startup.plan import plan_start

from conftest import ENGINE_ENV


def settings_for(models, volume, **env: str):
    return load_settings(
        {
            **{k: v for k, v in os.environ.items() if k not in COMPILE_CACHE_VARIABLES},  # torch may set one
            **ENGINE_ENV,
            "MODEL_NAME": str(models[1]),
            "CUDA_VISIBLE_DEVICES": "",
            "BASE_PATH": str(volume),
            **env,
        }
    )


def test_workers_of_another_release_model_or_layout_never_share_a_folder(models, tmp_path):
    base = settings_for(models, tmp_path)
    layout = plan_layout(base)
    folder = cache_folder(base, layout, "0.32.0")
    assert folder.is_relative_to(tmp_path / "tpworker-compile-cache" / "vllm-0.32.0")
    assert folder == cache_folder(settings_for(models, tmp_path), plan_layout(base), "0.32.0")  # stable
    tp2 = settings_for(models, tmp_path, TENSOR_PARALLEL_SIZE="2")
    other_model = settings_for(models, tmp_path, MODEL_NAME=str(models[0]))
    others = {
        cache_folder(base, layout, "0.33.0"),
        cache_folder(tp2, plan_layout(tp2), "0.32.0"),
        cache_folder(other_model, plan_layout(other_model), "0.32.0"),
    }
    assert folder not in others and len(others) == 3
    assert folder.name.startswith("tp1-pp1-cpu-")  # the device is part of the key too


def test_with_a_volume_the_caches_go_there_and_a_users_choice_stays(models, tmp_path):
    settings = settings_for(models, tmp_path)
    layout = plan_layout(settings)
    environment = compile_cache_environment(settings, layout, "0.32.0")
    root = cache_folder(settings, layout, "0.32.0")
    assert environment == {
        "VLLM_CACHE_ROOT": str(root),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
        "TRITON_CACHE_DIR": str(root / "triton"),
        "VLLM_USE_AOT_COMPILE": "0",  # no GPU here: vLLM's AOT artifacts do not load on CPU
    }
    assert root.is_dir()
    own = settings_for(models, tmp_path, TRITON_CACHE_DIR="/elsewhere")
    assert "TRITON_CACHE_DIR" not in compile_cache_environment(own, layout, "0.32.0")
    assert compile_cache_environment(settings_for(models, tmp_path, VLLM_CACHE_ROOT="/mine"), layout, "0.32.0") == {}
    assert compile_cache_environment(settings_for(models, tmp_path / "no-volume"), layout, "0.32.0") == {}


def test_only_a_compiled_engine_gets_a_cache_on_the_volume(models, tmp_path):
    eager = plan_start(settings_for(models, tmp_path))  # the CPU default: eager, nothing to compile
    assert "VLLM_CACHE_ROOT" not in eager.environment and not (tmp_path / "tpworker-compile-cache").exists()
    compiled = plan_start(settings_for(models, tmp_path, ENFORCE_EAGER="false"))
    assert compiled.environment["VLLM_CACHE_ROOT"].startswith(str(tmp_path / "tpworker-compile-cache"))


def _phases(output: str) -> dict[str, str]:
    """The start-up timeline's phases (name -> 'seconds s (detail)') from the worker's summary line."""
    line = next(x for x in output.splitlines() if "Start-up timeline to the first job's first output: " in x)
    text = line.split("Start-up timeline to the first job's first output: ")[1].rpartition("; ")[0]
    return {m[1]: m[2] for m in (re.fullmatch(r"(.*?) (\d+\.\d+ s.*)", part) for part in text.split("; "))}


def _compiled_kernels(volume) -> set[str]:
    return {p.name for p in (volume / "tpworker-compile-cache").rglob("*.so")}


@pytest.mark.engine
def test_a_second_start_loads_the_compiled_kernels_from_the_volume(models, tmp_path, monkeypatch):
    """vLLM's compiled mode (ENFORCE_EAGER=false: torch.compile with inductor, what GPU workers run) on CPU.
    The first start compiles and stores the kernels on the "volume"; the second, a fresh container with
    only the volume in common, compiles nothing new, its timeline says it found the cache, and it answers
    the same."""
    job = json.dumps({**CHAT_JOB, "input": {**CHAT_JOB["input"], "stream": False}})
    env = {"MODEL_NAME": str(models[1]), "BASE_PATH": str(tmp_path), "ENFORCE_EAGER": "false"}
    for name in COMPILE_CACHE_VARIABLES:  # importing vLLM here sets TORCHINDUCTOR_CACHE_DIR: not a user's choice
        monkeypatch.delenv(name, raising=False)
    runs, kernels = [], []
    for start in ("first", "second"):
        # the container's own caches are fresh for each start: only the volume carries anything over
        # (a short path: vLLM's sockets live under TMPDIR and a socket's path has at most 107 characters)
        with tempfile.TemporaryDirectory(prefix=f"tpw-{start}-") as home:
            code, output, seconds = run_handler("--test_input", job, timeout=900, HOME=home, TMPDIR=home, **env)
        assert code == 0, output[-3000:]
        runs.append((output, seconds))
        kernels.append(_compiled_kernels(tmp_path))
    (first, first_s), (second, second_s) = runs
    said = [[line for line in output.splitlines() if "Compile cache" in line] for output, _ in runs]
    assert "Compile cache (new): " in first and "Compile cache (reused): " in second, said
    first_phases, second_phases = _phases(first), _phases(second)
    assert "compile cache created" in first_phases and "compile cache found" in second_phases, second_phases
    assert kernels[0], "the first start wrote no compiled kernels to the volume"
    assert kernels[1] == kernels[0], f"the second start compiled again: {sorted(kernels[1] - kernels[0])}"
    assert "load failure" not in second  # vLLM's words when a cached artifact cannot be used
    warm_up = "compiled (the CPU warm-up pass)"
    text = [o.split("--- text of choice 0: ")[1].splitlines()[0] for o, _ in runs]
    assert text[0] == text[1] and "Paris" in text[0]
    print(
        f"compiling start {first_s:.1f} s (warm-up pass {first_phases[warm_up]}), "
        f"from the cache {second_s:.1f} s (warm-up pass {second_phases[warm_up]})"
    )
