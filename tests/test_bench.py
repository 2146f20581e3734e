"""`tpworker bench`: the figures' arithmetic, its options, and one small real run (the raw engine
and the handler's routes at TP=1, on the real CPU engine) that must produce the JSON, the Markdown
and the chart with sane figures. Timings are reported, never asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from tpworker.bench import metrics, options, targets
from tpworker.bench.metrics import Timing

from conftest import ENGINE_ENV, ROOT

OUTPUT_TOKENS = 8
LEVELS = (1, 2)


def test_percentile_interpolates_between_ranks():
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([5.0], 90) == 5.0
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert metrics.percentile([10.0, 0.0, 20.0], 90) == pytest.approx(18.0)


def test_round_figures_from_timings():
    timings = [
        Timing(sent=0.0, first=0.1, done=1.1, tokens=11, prompt_tokens=30),
        Timing(sent=0.0, first=0.3, done=2.3, tokens=11, prompt_tokens=32),
    ]
    figures = metrics.round_figures(timings, expected_tokens=11)
    assert figures["complete"] and figures["output_tokens"] == 22
    assert figures["tokens_per_s"] == pytest.approx(22 / 2.3)
    assert figures["ttft_ms_median"] == pytest.approx(200.0)
    assert figures["itl_ms_median"] == pytest.approx(150.0)  # (1000 ms / 10 + 2000 ms / 10) / 2
    assert figures["prompt_tokens_mean"] == 31
    short = metrics.round_figures([Timing(sent=0.0, first=0.1, done=1.0, tokens=5)], expected_tokens=11)
    assert not short["complete"]
    failed = metrics.round_figures([Timing(sent=0.0, done=1.0, error="boom")], expected_tokens=11)
    assert not failed["complete"] and failed["errors"] == ["boom"] and failed["tokens_per_s"] == 0


def test_arrivals_per_second_and_the_longest_silence():
    steady = Timing(sent=0.0, done=1.0, tokens=5, arrivals=[0.1, 0.15, 0.2, 0.25, 0.3])  # every 50 ms
    bursts = Timing(sent=0.0, done=1.0, tokens=5, arrivals=[0.1, 0.5, 0.9])  # 400 ms apart
    figures = metrics.round_figures([steady, bursts], expected_tokens=5)
    assert figures["arrivals_per_s_median"] == pytest.approx((20.0 + 2.5) / 2)  # 4 / 0.2 s and 2 / 0.8 s
    assert figures["silence_ms_max"] == pytest.approx(400.0)
    whole = metrics.round_figures([Timing(sent=0.0, done=1.0, tokens=5, arrivals=[0.9])], expected_tokens=5)
    assert whole["arrivals_per_s_median"] is None and whole["silence_ms_max"] is None  # one arrival: no gap


def test_summary_and_ratio_use_medians():
    rounds = [
        {"complete": True, "requests": 2, **{f: None for f in metrics.FIGURES}, "tokens_per_s": v}
        for v in (90, 100, 130)
    ]
    summary = metrics.summarize(rounds)
    assert summary["tokens_per_s"] == {"median": 100, "min": 90, "max": 130}
    assert summary["ttft_ms_median"] is None and summary["complete"] and summary["requests"] == 6
    raw = {"tokens_per_s": {"median": 200}, "ttft_ms_median": {"median": 50.0}}
    path = {"tokens_per_s": {"median": 196}, "ttft_ms_median": {"median": 53.5}}
    assert metrics.ratio_to_raw(path, raw) == {"tokens_per_s": pytest.approx(0.98), "ttft_added_ms": pytest.approx(3.5)}
    assert metrics.ratio_to_raw(path, None) == {"tokens_per_s": None, "ttft_added_ms": None}


def test_paths_option_expands_groups_and_always_measures_raw():
    assert options.route_list("handler") == ("raw", "raw-paired", "handler-native", "handler-openai")
    assert options.route_list("dev-openai,vllm-serve") == ("raw", "dev-openai", "vllm-serve")
    with pytest.raises(argparse.ArgumentTypeError, match="Accepted"):
        options.route_list("proxy")
    assert options.int_list("32, 1,8,8") == (1, 8, 32)
    with pytest.raises(argparse.ArgumentTypeError):
        options.int_list("0,2")


def test_weight_scaling_compares_with_the_smallest_tp_size():
    runs = {
        "1": {"weights": {"raw": [{"rank": 0, "loading_bytes": 400, "tensor_bytes": 50}]}},
        "2": {
            "weights": {
                "raw": [
                    {"rank": 0, "loading_bytes": 204, "tensor_bytes": 25},
                    {"rank": 1, "loading_bytes": 230, "tensor_bytes": 25},
                ]
            }
        },
    }
    scaling = targets.tp_scaling(runs)
    assert scaling["base_tp"] == 1
    second = scaling["sizes"][1]
    assert second["ratio"] == pytest.approx(230 / 400) and second["limit"] == pytest.approx(0.55)


def test_a_dev_target_shows_how_far_the_same_engine_moves_between_processes():
    def level(tokens_per_s_vs_raw=None, paired=None):
        return {"vs_raw": {"tokens_per_s": tokens_per_s_vs_raw}, "vs_paired": paired or {}}

    result = {
        "workload": {"stream": False},
        "runs": {
            "1": {
                "cold_start": {},
                "routes": {
                    "raw": {"levels": {"8": level(1.0)}},
                    "raw-paired": {"levels": {"8": level(0.93)}},
                    "handler-native": {"levels": {"8": level(0.95, {"tokens_per_s": 1.01})}},
                    "dev-native": {"levels": {"8": level(0.96)}},
                },
            }
        },
    }
    rows = {(row["route"], row["what"]): row for row in targets.evaluate(result)}
    dev = rows[("dev-native", "tokens/s vs raw")]
    assert dev["met"] and dev["between_processes"] == pytest.approx(0.93)
    handler = rows[("handler-native", "tokens/s vs raw-paired")]
    assert handler["value"] == pytest.approx(1.01) and "between_processes" not in handler


@pytest.fixture(scope="module")
def bench_run(models, tmp_path_factory):
    """One real, small run: raw + handler routes at TP=1 (two engines, one after the other)."""
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "tpworker",
        "bench",
        "--tp",
        "1",
        "--concurrency",
        ",".join(map(str, LEVELS)),
        "--prompt-tokens",
        "32",
        "--output-tokens",
        str(OUTPUT_TOKENS),
        "--repetitions",
        "1",
        "--warmup",
        "1",
        "--paths",
        "handler",
        "--out",
        str(out),
        "--name",
        "small",
    ]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **ENGINE_ENV}, capture_output=True, text=True, timeout=600
    )
    folder = out / "small"
    logs = "".join(p.read_text()[-2000:] for p in sorted((folder / "logs").glob("*.log"))) if folder.exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
    return folder, done.stdout


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_a_real_run_measures_every_route_and_completes_every_request(bench_run):
    folder, _ = bench_run
    result = json.loads((folder / "result.json").read_text())
    run = result["runs"]["1"]
    assert run["errors"] == []
    assert set(run["routes"]) == {"raw", "raw-paired", "handler-native", "handler-openai"}
    for route, data in run["routes"].items():
        assert set(data["levels"]) == {str(level) for level in LEVELS}, route
        for level, figures in data["levels"].items():
            summary, (measured,) = figures["summary"], figures["rounds"]
            assert summary["complete"], (route, level, measured)
            assert measured["output_tokens"] == int(level) * OUTPUT_TOKENS
            assert 20 <= measured["prompt_tokens_mean"] <= 50  # 32 tokens of text plus a short tag
            assert summary["tokens_per_s"]["median"] > 0
            assert 0 < summary["ttft_ms_median"]["median"] <= summary["e2e_ms_median"]["median"]
            assert summary["itl_ms_median"]["median"] > 0
            assert summary["arrivals_per_s_median"]["median"] > 0  # a stream of 8 tokens arrives more than once
            if route != "raw":
                assert figures["vs_raw"]["tokens_per_s"] > 0
        assert len(data["warmup"]) == 1
    for phase in ("raw", "handler"):
        assert run["cold_start"][phase]["seconds"] > 1  # a process start, vLLM's import and an engine
        (rank,) = run["weights"][phase]
        # the embedded model is ~277 MB of bf16 weights; the load measured by the engine holds them
        assert 200 * 2**20 < rank["loading_bytes"] < 1024 * 2**20
        assert 0 < rank["tensor_bytes"] <= rank["loading_bytes"]
    for phase in ("raw", "handler"):
        cpu = run["cpu"][phase]
        assert cpu["wall_s"] > 0 and cpu["cores"] >= 1
        # the engine's ranks did the generating: they used CPU, and no part used more than the machine
        assert cpu["seconds"]["deeper"] > 0.1 * cpu["wall_s"]
        assert 0 < sum(cpu["seconds"].values()) <= 1.05 * cpu["wall_s"] * cpu["cores"]
    checks = {(t["what"], t["route"], t["concurrency"]) for t in result["targets"]}
    assert ("TTFT added vs raw-paired (ms)", "handler-native", 1) in checks
    assert ("cold start added (s)", "handler-native", None) in checks
    assert result["load"]["during_max"] >= 0 and result["machine"]["cores"] >= 1


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_a_real_run_writes_markdown_a_chart_and_a_terminal_table(bench_run):
    folder, stdout = bench_run
    markdown = (folder / "result.md").read_text()
    for text in (
        "## TP=1: throughput and latency",
        "| handler-openai | 2 |",
        "## Cold start and weight memory",
        "## CPU during the measured rounds",
        "## Targets",
        "## Method",
        "tpworker bench --tp 1 --concurrency 1,2",
        "tokens_per_s.png",
    ):
        assert text in markdown, text
    png = (folder / "tokens_per_s.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "throughput and latency" in stdout and "handler-native" in stdout
