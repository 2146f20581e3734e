"""`tpworker bench --fairness`'s figures and reports: per scenario, the valid jobs' median and p90 latency
(submit to COMPLETED, completed jobs only), the median's ratio to the first baseline's, the valid jobs that did
not complete, and what became of the hostile request; PASS when the median is within TARGET_RATIO of the
baseline's and every valid job completed. fairness.json holds every job, fairness.md the table."""

from __future__ import annotations

import ast
import json
import statistics
from pathlib import Path
from typing import Any

from tpworker.bench.metrics import percentile
from tpworker.errors import in_one_line

TARGET_RATIO = 2.0


def figures(scenario: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The valid jobs' figures; `baseline` is the first baseline scenario (None: this one is)."""
    valid = scenario["valid"]
    latencies = [job["latency_s"] for job in valid if job["status"] == "COMPLETED"]
    failed = [job for job in valid if job["status"] != "COMPLETED"]
    median = statistics.median(latencies) if latencies else None
    base = figures(baseline, None)["median_s"] if baseline is not None else median
    ratio = median / base if median is not None and base else None
    return {
        "jobs": len(valid),
        "completed": len(latencies),
        "failed": len(failed),
        "failed_statuses": sorted({job["status"] for job in failed}),
        "median_s": median,
        "p90_s": percentile(latencies, 90),
        "ratio": ratio,
        "passed": ratio is not None and ratio <= TARGET_RATIO and not failed,
    }


def outcome(pathological: dict[str, Any] | None) -> str:
    """What became of the hostile request, in words."""
    if pathological is None:
        return "none"
    if pathological["outcome"] == "repeated":
        jobs = pathological["jobs"]
        done = [j["latency_s"] for j in jobs if j["status"] == "COMPLETED"]
        text = f"{len(jobs)} sent back to back: {len(done)} completed"
        text += f" (median {statistics.median(done):.2f} s)" if done else ""
        refused = [j for j in jobs if j["status"] != "COMPLETED"]
        if refused:
            text += f", {len(refused)} {refused[0]['status']}: {_short(refused[0].get('error'))}"
        return text
    seconds = pathological["seconds"]
    if pathological["outcome"] == "refused":
        return f"refused after {seconds:.2f} s: {_short(pathological.get('error'))}"
    if pathological["outcome"] == "completed":
        return f"completed in {seconds:.2f} s"
    if pathological["outcome"] == "running":
        return f"still running when the load ended ({seconds:.1f} s): cancelled"
    return f"{pathological['status']} after {seconds:.2f} s: {_short(pathological.get('error'))}"


def _short(text: object, limit: int = 160) -> str:
    """An error in one line: its message when it is an error object (RunPod reports a yielded dict as its str())."""
    try:
        error = ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        error = text
    message = error.get("message", error) if isinstance(error, dict) else error
    line = in_one_line(message)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows(result: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(scenario, its figures) in order, each against the first baseline."""
    scenarios = result["scenarios"]
    baseline = next((s for s in scenarios if s["name"] == "baseline"), scenarios[0])
    return [(s, figures(s, None if s is baseline else baseline)) for s in scenarios]


def one_line(scenario: dict[str, Any], baseline: dict[str, Any]) -> str:
    f = figures(scenario, None if scenario is baseline else baseline)
    ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
    return (
        f"median {_seconds(f['median_s'])} s, p90 {_seconds(f['p90_s'])} s, {ratio} baseline, "
        f"{f['failed']} failed: {'PASS' if f['passed'] else 'FAIL'}; "
        f"hostile request: {outcome(scenario['pathological'])}"
    )


def settled(scenario: dict[str, Any]) -> str:
    s = scenario.get("settle") or {}
    if "quiet" not in s:
        return f"idle after {s.get('idle_after_s', 0):.0f} s"
    quiet = "quiet" if s["quiet"] else "NOT quiet"
    return f"{quiet} after {s['quiet_after_s']:.0f} s"


def _table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def markdown(result: dict[str, Any]) -> str:
    from tpworker.bench.report import describe_machine

    header = ["scenario", "hostile request", "valid done", "median s", "p90 s", "vs baseline", "failed", "target"]
    header += ["hostile request's outcome", "then"]
    table = []
    for scenario, f in rows(result):
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        failed = str(f["failed"]) + (f" ({', '.join(f['failed_statuses'])})" if f["failed"] else "")
        table.append(
            [
                scenario["name"],
                scenario["what"],
                f"{f['completed']}/{f['jobs']}",
                _seconds(f["median_s"]),
                _seconds(f["p90_s"]),
                ratio,
                failed,
                "PASS" if f["passed"] else "FAIL",
                outcome(scenario["pathological"]).replace("|", "\\|"),
                settled(scenario),
            ]
        )
    variables = " ".join(f"{k}={v}" for k, v in result["worker_variables"].items())
    sizes = result["sizes"]
    return "\n".join(
        [
            f"# Fairness: {result['name']}",
            "",
            f"`{result['command']}` ({result['created']}, {result['wall_s']:.0f} s)",
            "",
            _table(header, table),
            "",
            f"Valid load per scenario: {result['valid_jobs']} jobs (chat and prompt alternately, max_tokens 16, "
            f"greedy) from {result['concurrency']} clients, each sending its next job when its last completed. "
            "Latency: POST /run to the job seen COMPLETED (/stream). Median and p90 over the completed jobs; "
            f"target: median within {TARGET_RATIO:g}x the first baseline's, every valid job completed. "
            "The hostile request is sent first and runs alone for "
            f"{result.get('head_start_s', 0):g} s (its cost grows as it runs) before the load starts (the "
            "context-limit prompts are sent by one more client, back to back, during the load); "
            "one still running when the load ends is cancelled; the next scenario starts once /health reports "
            "the worker idle and its processes' CPU use is back to its idle level "
            f"({result.get('idle_cpu_cores', '-')} cores).",
            "",
            f"Context {sizes['max_model_len']} tokens; context-filling prompt {sizes['context_tokens']} tokens.",
            "",
            f"Worker: {result.get('handler', 'handler.py')} with {variables}",
            "",
            f"Machine: {describe_machine(result)}",
            "",
        ]
    )


def write(result: dict[str, Any], folder: Path) -> None:
    result = {**result, "summary": {s["name"]: f for s, f in rows(result)}}
    (folder / "fairness.json").write_text(json.dumps(result, indent=1))
    (folder / "fairness.md").write_text(markdown(result))
