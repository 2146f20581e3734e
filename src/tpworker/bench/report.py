"""A result as a terminal table (rich), result.json, result.md and tokens_per_s.png (chart.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpworker.bench.chart import chart
from tpworker.bench.options import ROUTE_ORDER
from tpworker.bench.targets import rank_bytes, reference

if TYPE_CHECKING:
    from rich.console import Console

MIB = 1024**2
METHOD = [
    "Every path gets the same requests: a prompt of the given length (plus a short tag unique to each request, "
    "so that vLLM's prefix cache never serves one request from another) and exactly the given number of output "
    "tokens (ignore_eos, greedy).",
    "A round sends `concurrency` requests at once and waits for all of them; output tokens/s is the round's "
    "output tokens over the time from the first request sent to the last token received.",
    "TTFT: request sent to first token received. ITL: (last token - first token) / (tokens - 1) per request, "
    "because the worker streams tokens in chunks (every chunk is an HTTP post on RunPod). E2E: sent to last token.",
    "arrivals/s: per request, the reads of the response that brought text, after the first, per second between "
    "the first and the last (the median over a round's requests); max silence: the longest gap between two such "
    "reads in any request of the round. vLLM's own server sends each token as it is made; the worker sends "
    "chunks paced by STREAM_INTERVAL_MS (or counted: the BATCH_SIZE settings).",
    "Each TP size and each process kind runs alone (one engine in memory at a time): `raw` is vLLM's AsyncLLM "
    "built from the engine arguments the worker uses; `handler-*` is handler.py's handler in process (the worker "
    "built as handler.py builds it); `dev-*` is `tpworker dev` over HTTP (POST /run + GET /stream, or "
    "/openai/v1/completions), i.e. RunPod's job loop in a `python handler.py` process; `vllm-serve` is vLLM's own "
    "OpenAI server through the openai client. Routes of one process run interleaved (the order rotates per "
    "repetition).",
    "`x raw` is a path's median tokens/s over the raw engine's (its own process); `x paired` and, for the "
    "handler routes, `TTFT +ms` compare with `raw-paired`: the worker's own AsyncLLM driven directly in the "
    "handler's process, its rounds interleaved with the handler's, so that the comparison holds the handler's "
    "cost and not the noise between processes started minutes apart. `TTFT +ms` of the other paths is against "
    "raw. Targets use the same references.",
    "The worker runs with MAX_CONCURRENCY (shown above) at the highest level, so that every request of a round "
    "runs at once on every path.",
    "`same engine, other process` in the targets: raw-paired's tokens/s over raw's at that level, i.e. the same "
    "engine driven the same way in two processes started minutes apart. Its distance from 1 is how much a "
    "comparison between processes (dev or vllm-serve against raw) moves with the machine alone; a miss smaller "
    "than that is not resolved by this run.",
    "CPU during the measured rounds: the user and system CPU seconds of each part of a phase (psutil, from the "
    "first measured round to the last), as a share of all cores over that time. On a GPU machine the engine's "
    "work is on the GPUs and these shares are the host's; on a CPU-only machine the client and the dev server "
    "(which stand in for the user and RunPod's cloud, elsewhere in production) take their share from the engine.",
    "Cold start: from the process start to the first token of one streamed request sent as soon as the process "
    "takes requests: for raw and handler the benchmark's process that starts the engine, for vllm-serve the "
    "server's, for dev the `python handler.py` process the dev server starts (RunPod's worker; the dev server's "
    "own start, not part of production, is in result.json as server_seconds). The model's files are read once "
    "before, so no phase pays for the first disk read. One sample per process: on a busy machine it varies by "
    "seconds.",
    "Weights per rank: the memory the model load took on each rank, read from the engine with collective_rpc: "
    "on GPUs vLLM's own measure (device memory before and after loading, its 'Model loading took X GiB'); on CPU "
    "the rank process's resident memory before and after loading (freed heap returned first), because vLLM's CPU "
    "build packs linear weights into oneDNN buffers that are not torch tensors. The bytes of the torch tensors "
    "the model still holds (parameters and buffers, shared storage once) are shown beside it.",
    "The median over repetitions is reported with [min-max]; ratios compare medians.",
]


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _spread(figure: dict[str, Any] | None, digits: int = 1) -> str:
    if not figure:
        return "-"
    return f"{_f(figure['median'], digits)} [{_f(figure['min'], digits)}-{_f(figure['max'], digits)}]"


def _median(figure: dict[str, Any] | None, digits: int = 1) -> str:
    return _f(figure["median"], digits) if figure else "-"


def throughput_rows(run: dict[str, Any]) -> list[list[str]]:
    rows = []
    for route in [r for r in ROUTE_ORDER if r in run["routes"]]:
        for level, figures in sorted(run["routes"][route]["levels"].items(), key=lambda kv: int(kv[0])):
            s, versus, paired = figures["summary"], figures.get("vs_raw") or {}, figures.get("vs_paired") or {}
            added = reference(route, figures)[1].get("ttft_added_ms")
            rows.append(
                [
                    route,
                    level,
                    _spread(s["tokens_per_s"]),
                    "1" if route == "raw" else _f(versus.get("tokens_per_s"), 3),
                    _f(paired.get("tokens_per_s"), 3) if paired else "",
                    _median(s["ttft_ms_median"]),
                    "" if route == "raw" or added is None else f"{added:+.1f}",
                    _median(s["ttft_ms_p90"]),
                    _median(s["itl_ms_median"], 2),
                    _median(s["e2e_ms_median"], 0),
                    _median(s.get("arrivals_per_s_median")),
                    _median(s.get("silence_ms_max"), 0),
                    "yes" if s["complete"] else "NO",
                ]
            )
    return rows


THROUGHPUT_HEADER = [
    "path",
    "conc.",
    "output tok/s",
    "x raw",
    "x paired",
    "TTFT ms",
    "TTFT +ms",
    "TTFT p90 ms",
    "ITL ms",
    "E2E ms",
    "arrivals/s",
    "max silence ms",
    "complete",
]


def start_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for tp, run in result["runs"].items():
        raw = run["cold_start"].get("raw", {}).get("seconds")
        for phase, cold in run["cold_start"].items():
            ranks = run["weights"].get(phase)
            weights = ", ".join(f"{rank_bytes(r) / MIB:,.1f}" for r in ranks) if ranks else "-"
            tensors = ", ".join(f"{r['tensor_bytes'] / MIB:,.1f}" for r in ranks) if ranks else "-"
            added = "" if phase == "raw" or raw is None else f"{cold['seconds'] - raw:+.2f}"
            rows.append([tp, phase, _f(cold["seconds"], 2), added, weights, tensors])
    return rows


START_HEADER = ["TP", "process", "cold start s", "vs raw s", "weights/rank MiB", "torch tensors/rank MiB"]

# What each process of a phase is (CpuMeter's groups), per phase.
CPU_PARTS = {
    "raw": {"bench": "client + engine front end", "direct": "engine core", "deeper": "ranks"},
    "handler": {"bench": "client + worker front end", "direct": "engine core", "deeper": "ranks"},
    "dev": {
        "bench": "client",
        "server": "dev server (RunPod's part)",
        "direct": "worker front end (handler.py)",
        "deeper": "engine core + ranks",
    },
    "vllm-serve": {"bench": "client", "server": "vllm serve front end", "direct": "engine core", "deeper": "ranks"},
}


def cpu_rows(result: dict[str, Any]) -> list[list[str]]:
    """Each process group's share of the machine (cores x wall time) during the measured rounds."""
    rows = []
    for tp, run in result["runs"].items():
        for phase, cpu in run.get("cpu", {}).items():
            capacity = cpu["wall_s"] * cpu["cores"]
            parts = [
                f"{label} {cpu['seconds'][group] / capacity:.0%}"
                for group, label in CPU_PARTS.get(phase, {}).items()
                if group in cpu["seconds"]
            ]
            total = sum(cpu["seconds"].values()) / capacity
            rows.append([tp, phase, _f(cpu["wall_s"], 0), "; ".join(parts), f"{total:.0%}"])
    return rows


CPU_HEADER = ["TP", "process", "rounds s", "CPU by part (share of all cores)", "all parts"]


def target_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in result["targets"]:
        digits = 3 if t["what"].startswith(("tokens/s", "weights")) else 2  # ratios, else ms or s
        rows.append(
            [
                t["tp"],
                t["what"],
                t["route"] or "",
                "" if t["concurrency"] is None else str(t["concurrency"]),
                _f(t["value"], digits),
                f"{t['sense']} {t['target']:.{digits}f}",
                "yes" if t["met"] else "NO",
                _f(t["margin"], digits),
                _f(t["between_processes"], 3) if "between_processes" in t else "",
            ]
        )
    return rows


# the last column: raw-paired over raw, the same engine in another process (targets.between_processes)
TARGET_HEADER = ["TP", "check", "path", "conc.", "measured", "target", "met", "margin", "same engine, other process"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def describe_machine(result: dict[str, Any]) -> str:
    m, load = result["machine"], result["load"]
    gpus = ", ".join(m["gpus"]) or "no GPU"
    extensions = m.get("cpu_vector_extensions")  # recorded since results named the CPU's extensions
    cpu = m["cpu"] if extensions is None else f"{m['cpu']} ({', '.join(extensions) or 'no AVX-512'})"
    return (
        f"{cpu}, {m['cores']} cores, {m['memory_gib']} GiB, {gpus}; {m['os']}, Python {m['python']}, "
        f"{m['vllm']}, {m['torch']}, {m['runpod']}; tpworker {m['tpworker_commit']}. Load average (1 min) "
        f"at start {load['at_start'][0]}, during the run {load['during_min']}-{load['during_max']} "
        f"(mean {load['during_mean']})."
    )


def measured_prompt(result: dict[str, Any]) -> str:
    """The prompt length the engine counted (the unique tag included), over every measured round."""
    means = [
        r["prompt_tokens_mean"]
        for run in result["runs"].values()
        for data in run["routes"].values()
        for level in data["levels"].values()
        for r in level["rounds"]
        if r.get("prompt_tokens_mean")
    ]
    return f" (measured, with its tag: {sum(means) / len(means):.0f})" if means else ""


def describe_workload(result: dict[str, Any]) -> str:
    w = result["workload"]
    return (
        f"prompt {w['prompt_tokens']} tokens{measured_prompt(result)}, {w['output_tokens']} output tokens per "
        f"request (ignore_eos, greedy), "
        f"{'streamed' if w['stream'] else 'not streamed'}, concurrency {', '.join(map(str, w['concurrency']))}; "
        f"{w['warmup']} warm-up round(s) per path, {w['repetitions']} measured repetitions per level; "
        f"MAX_CONCURRENCY={result.get('max_concurrency')}."
    )


def markdown(result: dict[str, Any]) -> str:
    out = [
        f"# tpworker bench: {result['name']}",
        "",
        f"- Model: {result['model']['served_name']} (`{result['model']['path']}`)",
        f"- Command: `{result['command']}` ({result['wall_s']:.0f} s, {result['created']})",
        f"- Machine: {describe_machine(result)}",
        f"- Workload: {describe_workload(result)}",
        "",
    ]
    for tp, run in result["runs"].items():
        out += [f"## TP={tp}: throughput and latency", "", _table(THROUGHPUT_HEADER, throughput_rows(run)), ""]
        for error in run["errors"]:
            out += [f"**{error['phase']} failed**: {error['message']}", ""]
    out += ["## Cold start and weight memory", "", _table(START_HEADER, start_rows(result)), ""]
    if cpu_rows(result):
        out += ["## CPU during the measured rounds", "", _table(CPU_HEADER, cpu_rows(result)), ""]
    scaling = result.get("tp_scaling")
    if scaling and len(scaling["sizes"]) > 1:
        out += [
            f"Weights per rank against TP={scaling['base_tp']}: "
            + ", ".join(f"TP={s['tp']} {s['ratio']:.3f} (limit {s['limit']:.3f})" for s in scaling["sizes"])
            + ".",
            "",
        ]
    out += [
        "## Targets",
        "",
        _table(TARGET_HEADER, target_rows(result)) if result["targets"] else "(none applicable)",
        "",
        "## Method",
        "",
        *[f"- {line}" for line in METHOD],
        "",
        "![output tokens/s against concurrency](tokens_per_s.png)",
        "",
    ]
    return "\n".join(out)


def write(result: dict[str, Any], folder: Path) -> None:
    (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "result.md").write_text(markdown(result))
    chart(result, folder / "tokens_per_s.png")


def show(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    def table(title: str, header: list[str], rows: list[list[str]]) -> Table:
        t = Table(title=title, title_justify="left")
        for name in header:
            t.add_column(name, justify="left" if name in ("path", "process", "check", "TP") else "right")
        for row in rows:
            t.add_row(*[str(c) for c in row])
        return t

    console.print(f"Machine: {describe_machine(result)}")
    console.print(f"Workload: {describe_workload(result)}")
    for tp, run in result["runs"].items():
        console.print(table(f"TP={tp}: throughput and latency", THROUGHPUT_HEADER, throughput_rows(run)))
    console.print(table("Cold start and weight memory", START_HEADER, start_rows(result)))
    if cpu_rows(result):
        console.print(table("CPU during the measured rounds", CPU_HEADER, cpu_rows(result)))
    if result["targets"]:
        console.print(table("Targets", TARGET_HEADER, target_rows(result)))
