"""The cold starts' figures (coldstart.py's starts) -> result.json, result.md and cold_start.png:
each phase's end as a median over the starts of each kind, the first job's time to first token against
jobs 2-10, and what the worker adds to the raw engine's start."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tpworker.bench.coldstart import JOBS, KINDS

NOTE = (
    "Each start is a fresh process; the starts of one TP size are interleaved (raw, worker, worker without "
    "warm-up, the order rotating each round). A phase's time is when it ended, in seconds since the process "
    "began (as the OS recorded it), the median over the starts; the phases come from the worker's own marks and "
    "from vLLM's log records of its start (vllm_bridge/start_records.py), the same for the raw engine. After the "
    f"start each process sends {JOBS} streamed requests one after another; the first one's first token ends "
    "the cold start."
)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ends(start: dict[str, Any]) -> dict[str, float]:
    return {phase["phase"]: phase["ends_at"] for phase in start["phases"]}


def summarize(starts: list[dict[str, Any]]) -> dict[str, Any]:
    """One kind's starts at one TP size: each phase's median end, the cold start and the first tokens."""
    good = [s for s in starts if "error" not in s]
    ends: dict[str, list[float]] = {}
    for start in good:
        for phase in start["phases"]:
            ends.setdefault(phase["phase"], []).append(phase["ends_at"])
    first = [s["ttft_ms"][0] for s in good]
    # within one start: far less noisy than the starts' ends, which move by seconds from start to start here
    after_ready = [
        e["first token"] - e["engine ready"] for e in map(_ends, good) if {"engine ready", "first token"} <= e.keys()
    ]
    later = [statistics.median(s["ttft_ms"][1:]) for s in good if len(s["ttft_ms"]) > 1]
    return {
        "starts": len(starts),
        "failed": [s["error"] for s in starts if "error" in s],
        "phase_ends_s": {phase: _median(values) for phase, values in ends.items()},
        "first_token_s": _median(ends.get("first token", [])),
        "first_token_range_s": [min(ends["first token"]), max(ends["first token"])] if "first token" in ends else None,
        "engine_ready_s": _median(ends.get("engine ready", [])),
        "ready_to_first_token_s": _median(after_ready),
        "first_job_ttft_ms": _median(first),
        "later_jobs_ttft_ms": _median(later),
    }


def summaries(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {tp: {kind: summarize(starts) for kind, starts in kinds.items()} for tp, kinds in runs.items()}


def added_by_worker(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The worker's start against the raw engine's, in seconds (medians): to the engine's being ready, to
    the first job's first token, and from the one to the other within a start."""
    raw, worker = summary["raw"], summary["worker"]
    out: dict[str, float] = {}
    for key in ("engine_ready_s", "first_token_s", "ready_to_first_token_s"):
        if raw[key] is not None and worker[key] is not None:
            out[key] = worker[key] - raw[key]
    return out


def phase_rows(summary: dict[str, Any]) -> list[list[str]]:
    """A row per phase, in the order the worker reaches them (then the raw engine's own); a column per
    kind: 'ends at (lasted)'."""
    worker = summary["worker"]["phase_ends_s"]
    order = sorted(
        {phase for kind in KINDS for phase in summary[kind]["phase_ends_s"]},
        key=lambda p: worker.get(p, min(summary[k]["phase_ends_s"].get(p, float("inf")) for k in KINDS)),
    )
    rows: list[list[str]] = []
    for phase in order:
        row = [phase]
        for kind in KINDS:
            ends = summary[kind]["phase_ends_s"]
            if phase not in ends:
                row.append("")
                continue
            lasted = ends[phase] - max((t for t in ends.values() if t < ends[phase]), default=0.0)
            row.append(f"{ends[phase]:.2f} ({lasted:.2f})")
        rows.append(row)
    return rows


def first_job_rows(all_summaries: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for tp, summary in all_summaries.items():
        for kind in KINDS:
            s = summary[kind]
            if s["first_token_s"] is None:
                rows.append([tp, kind, "failed", "", "", "", "", ""])
                continue
            low, high = s["first_token_range_s"]
            ratio = s["first_job_ttft_ms"] / s["later_jobs_ttft_ms"] if s["later_jobs_ttft_ms"] else None
            rows.append(
                [
                    tp,
                    kind,
                    f"{s['first_token_s']:.1f} ({low:.1f}-{high:.1f})",
                    f"{s['engine_ready_s']:.1f}" if s["engine_ready_s"] is not None else "",
                    f"{s['ready_to_first_token_s']:.2f}" if s["ready_to_first_token_s"] is not None else "",
                    f"{s['first_job_ttft_ms']:.0f}",
                    f"{s['later_jobs_ttft_ms']:.0f}",
                    f"{ratio:.2f}" if ratio else "",
                ]
            )
    return rows


FIRST_JOB_HEADER = [
    "TP",
    "process",
    "first token s (min-max)",
    "engine ready s",
    "engine ready to first token s",
    "job 1 TTFT ms",
    "jobs 2-10 TTFT ms",
    "job 1 / jobs 2-10",
]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(result: dict[str, Any]) -> str:
    out = [f"# Cold starts: {result['model']}", "", f"`{result['command']}`", "", result["machine_line"], "", NOTE, ""]
    out += ["## First token and the first job", "", *_table(FIRST_JOB_HEADER, first_job_rows(result["summary"])), ""]
    for tp, summary in result["summary"].items():
        added = result["added_by_worker"][tp]
        out += [f"## Phases at TP={tp}: ends at s (lasted s), median of {summary['raw']['starts']} starts", ""]
        out += _table(["phase", *KINDS], phase_rows(summary)) + [""]
        out += [
            "What the worker adds to the raw engine's start (medians): "
            + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:+.2f} s" for k, v in added.items()),
            "",
        ]
    return "\n".join(out)


def chart(result: dict[str, Any], path: Path) -> None:
    """A bar per TP size and kind, split into its phases (median durations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(tp, kind) for tp in result["summary"] for kind in KINDS]
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(bars)))
    colors = plt.get_cmap("tab20")
    phases: list[str] = []
    for y, (tp, kind) in enumerate(bars):
        ends = sorted(result["summary"][tp][kind]["phase_ends_s"].items(), key=lambda item: item[1])
        left = 0.0
        for phase, end in ends:
            label = None
            if phase not in phases:
                phases.append(phase)
                label = phase  # once per phase in the legend
            ax.barh(y, end - left, left=left, color=colors(phases.index(phase) % 20), label=label)
            left = end
    ax.set_yticks(range(len(bars)), [f"TP={tp} {kind}" for tp, kind in bars])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the process began (medians)")
    ax.set_title(f"Cold start phases: {result['model']}")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict[str, Any], folder: Path) -> None:
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    (folder / "result.md").write_text(markdown(result))
    chart(result, folder / "cold_start.png")
