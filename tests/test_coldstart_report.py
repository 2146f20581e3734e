"""The cold-start report's arithmetic (bench/coldstart_report.py) on made-up starts: no process is
started here; the real starts are recorded under results/bench/ by `tpworker bench --cold-start`."""

from __future__ import annotations

from tpworker.bench import coldstart_report


def _start(ready: float, first_token: float, ttft_ms: list[float]) -> dict:
    phases = [("vLLM imported", 9.0), ("engine ready", ready), ("first token", first_token)]
    return {
        "phases": [{"phase": p, "ends_at": at, "seconds": 0.0, "detail": ""} for p, at in phases],
        "ttft_ms": ttft_ms,
    }


def test_medians_per_kind_and_the_interval_within_each_start():
    starts = [_start(30.0, 34.0, [4000, 250, 260]), _start(40.0, 43.0, [3000, 240, 250]), {"error": "it died"}]
    summary = coldstart_report.summarize(starts)
    assert summary["starts"] == 3 and summary["failed"] == ["it died"]
    assert summary["engine_ready_s"] == 35.0 and summary["first_token_s"] == 38.5
    assert summary["first_token_range_s"] == [34.0, 43.0]
    # the median of each start's own interval (4 and 3 s), not the difference of the medians
    assert summary["ready_to_first_token_s"] == 3.5
    assert summary["first_job_ttft_ms"] == 3500 and summary["later_jobs_ttft_ms"] == 250


def test_what_the_worker_adds_is_worker_minus_raw():
    raw = coldstart_report.summarize([_start(30.0, 33.7, [3700, 240])])
    worker = coldstart_report.summarize([_start(31.0, 34.2, [240, 230])])
    added = coldstart_report.added_by_worker({"raw": raw, "worker": worker})
    assert {k: round(v, 2) for k, v in added.items()} == {
        "engine_ready_s": 1.0,
        "first_token_s": 0.5,
        "ready_to_first_token_s": -0.5,
    }
