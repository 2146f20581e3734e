"""The whole benchmark: for each TP size, one phase process after another (one engine in memory at
a time), progress while they run, then figures, ratios, targets and the reports."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpworker.bench import machine, report, results, targets
from tpworker.bench.phase_process import PhaseProcess
from tpworker.bench.workload import TAG_TOKENS, Workload, prompt_body

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from tpworker.startup.plan import StartPlan

Plans = dict[int, tuple["StartPlan", dict[str, str]]]  # per TP size: the engine's plan, the worker's environment

# Which process serves which routes, in the order they run. dev and vllm-serve are compared with raw,
# a process started minutes apart (a machine's speed drifts between processes; on a shared 2-core VM by
# 10-20 %), so dev runs right after raw; the handler has its own reference in process (raw-paired).
PHASES = {
    "raw": ("raw",),
    "dev": ("dev-native", "dev-openai"),
    "handler": ("handler-native", "handler-openai", "raw-paired"),
    "vllm-serve": ("vllm-serve",),
}
ROOT = Path(__file__).resolve().parents[3]


def bench_environment(options: argparse.Namespace, tp: int) -> dict[str, str]:
    """The worker's environment for one TP size: the caller's, plus what the benchmark needs."""
    from tpworker.planning import hardware
    from tpworker.vllm_bridge import weights_probe

    env = dict(os.environ)
    if options.model:
        env.pop("MODEL", None)
        env["MODEL_NAME"] = options.model
    env["TENSOR_PARALLEL_SIZE"] = str(tp)
    env["MAX_CONCURRENCY"] = str(max_concurrency(options))
    if options.cold_start:
        return env  # starts as users' are, without the weight probe below
    # Lets the phases read each rank's weight memory (on CPU also measure it: vLLM's GPU workers do).
    env["WORKER_EXTENSION_CLS"] = weights_probe.WEIGHTS_PROBE
    if not hardware.visible_gpus(env.get("CUDA_VISIBLE_DEVICES")):
        env["WORKER_CLS"] = weights_probe.MEASURED_CPU_WORKER
    return env


def max_concurrency(options: argparse.Namespace) -> int:
    """Every request of a round must run at once, also through RunPod's job loop: the highest level
    (tpworker.serving.jobloop fills every slot; runpod 1.10's own loop needed about twice that)."""
    value: int = options.max_concurrency or max(options.concurrency)
    return value


def plan_engine(env: dict[str, str]) -> StartPlan:
    """The engine arguments and environment the worker would start with (imports vLLM)."""
    from tpworker.config.settings import load_settings
    from tpworker.startup.plan import plan_start

    return plan_start(load_settings(env))


def warm_page_cache(model: str) -> None:
    """Read the model's files once, so that no phase's cold start pays for the first disk read."""
    import psutil

    folder = Path(model)
    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) > psutil.virtual_memory().available / 2:
        return
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def make_body(engine_args: dict[str, Any], prompt_tokens: int) -> str:
    from transformers import AutoTokenizer

    if engine_args.get("tokenizer"):
        source, revision = engine_args["tokenizer"], engine_args.get("tokenizer_revision")
    else:
        source, revision = engine_args["model"], engine_args.get("revision")
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=revision, trust_remote_code=bool(engine_args.get("trust_remote_code"))
    )
    return prompt_body(tokenizer, max(1, prompt_tokens - TAG_TOKENS))


def steps_of(routes: list[str], workload: Workload) -> int:
    return 1 + len(routes) * (workload.warmup + len(workload.concurrency) * workload.repetitions)


def default_name(served: str, tps: tuple[int, ...]) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", served).strip("-").lower()
    return f"{slug}-tp{'-'.join(map(str, tps))}-{datetime.now():%Y%m%d-%H%M%S}"


def paths_text(routes: Collection[str]) -> str:
    """Routes as --paths takes them: whole groups by their name."""
    from tpworker.bench.options import GROUPS

    parts: list[str] = []
    for group, members in GROUPS.items():
        if group != "raw":
            parts += [group] if all(m in routes for m in members) else [m for m in members if m in routes]
    return ",".join(parts) or "raw"


def command_line(options: argparse.Namespace) -> str:
    """The command that reproduces this run, every knob spelled out."""
    parts = ["tpworker bench"]
    if options.model:
        parts.append(f"--model {options.model}")
    parts += [
        f"--tp {','.join(map(str, options.tp))}",
        f"--concurrency {','.join(map(str, options.concurrency))}",
        f"--prompt-tokens {options.prompt_tokens}",
        f"--output-tokens {options.output_tokens}",
        "--stream" if options.stream else "--no-stream",
        f"--warmup {options.warmup}",
        f"--repetitions {options.repetitions}",
        f"--paths {paths_text(options.paths)}",
    ]
    if options.max_concurrency:
        parts.append(f"--max-concurrency {options.max_concurrency}")
    if options.name:
        parts.append(f"--name {options.name}")
    return " ".join(parts)


def run_phases(
    options: argparse.Namespace,
    workload: Workload,
    routes: list[str],
    plans: Plans,
    body: str,
    folder: Path,
    progress: Progress,
    load: machine.LoadWatch,
) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for tp in options.tp:
        plan, env = plans[tp]
        run = runs[str(tp)] = results.new_run()
        engine_args_file = folder / f"tp{tp}-engine-args.pickle"
        engine_args_file.write_bytes(pickle.dumps(plan.engine_args))
        for phase, served in PHASES.items():
            chosen = [r for r in served if r in routes]
            if not chosen:
                continue
            spec = {
                "phase": phase,
                "routes": chosen,
                "tp": tp,
                "workload": workload.to_json(),
                "body": body,
                "model": plan.engine_args["served_model_name"][0],
                "engine_args_file": str(engine_args_file),
                "environment": plan.environment,
                "handler": str(options.handler_path),
                "log_dir": str(folder),
            }
            task = progress.add_task(f"TP={tp} {phase}", total=steps_of(chosen, workload))
            began = time.time()
            child = PhaseProcess(spec, folder, env)
            try:
                while True:
                    for event in child.new_events():
                        results.record(run, phase, event)
                        if event["event"] in ("cold", "round"):
                            progress.advance(task)
                    load.sample()
                    if child.process.poll() is not None:
                        for event in child.new_events():
                            results.record(run, phase, event)
                        break
                    time.sleep(0.5)
            finally:
                child.stop()
            progress.console.print(f"TP={tp} {phase}: finished in {time.time() - began:.0f} s (log: {child.log_path})")
            if child.process.returncode != 0 and not any(e["phase"] == phase for e in run["errors"]):
                run["errors"].append({"phase": phase, "message": f"exited with status {child.process.returncode}"})
            for error in run["errors"]:
                if error["phase"] == phase:
                    error["log"] = str(child.log_path)
                    progress.console.print(f"[red]TP={tp} {phase} failed: {error['message']} (log: {child.log_path})")
        results.summarize(run)
    return runs


def cold_starts(
    options: argparse.Namespace,
    plans: Plans,
    body: str,
    folder: Path,
    console: Console,
    served: str,
    started: float,
    load: machine.LoadWatch,
) -> int:
    """`--cold-start N`: the starts, then their phase table and chart."""
    from tpworker.bench import coldstart, coldstart_report

    runs = coldstart.run_starts(options, plans, body, folder, console, load)
    command = f"tpworker bench --tp {','.join(map(str, options.tp))} --cold-start {options.cold_start}"
    command += f" --prompt-tokens {options.prompt_tokens} --output-tokens {options.output_tokens}"
    result: dict[str, Any] = {
        "name": folder.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command + (f" --model {options.model}" if options.model else ""),
        "wall_s": round(time.time() - started, 1),
        "model": served,
        "machine": machine.describe(ROOT),
        "runs": runs,
    }
    result["load"] = load.summary()
    result["machine_line"] = f"Machine: {report.describe_machine(result)}"
    result["summary"] = coldstart_report.summaries(runs)
    result["added_by_worker"] = {tp: coldstart_report.added_by_worker(s) for tp, s in result["summary"].items()}
    coldstart_report.write(result, folder)
    console.print(coldstart_report.markdown(result))
    console.print(f"Results: {folder}/result.json, result.md, cold_start.png")
    failed = [e for kinds in result["summary"].values() for s in kinds.values() for e in s["failed"]]
    return 1 if failed else 0


def main(options: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (the chart, at the end: fail now, not after the run)
        import rich  # noqa: F401
    except ImportError as e:
        print(f"tpworker bench needs {e.name}: pip install 'tpworker[bench]' (rich, matplotlib)", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tpworker.dev import server as devserver
    from tpworker.errors import StartRefused

    # Piped output (CI, logs) gets room for the whole table instead of rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=170)
    workload = Workload(
        options.prompt_tokens,
        options.output_tokens,
        options.concurrency,
        options.stream,
        options.warmup,
        options.repetitions,
    )
    routes = list(options.paths)
    try:
        options.handler_path = devserver.find_handler(options.handler)
    except FileNotFoundError as e:
        console.print(f"tpworker bench: {e}")
        return 2
    if options.fairness:
        from tpworker.bench import fairness

        return fairness.main(options, console)
    load = machine.LoadWatch()
    console.print("Planning the engines (imports vLLM) ...")
    plans: Plans = {}
    try:
        for tp in options.tp:
            env = bench_environment(options, tp)
            plans[tp] = (plan_engine(env), env)
    except StartRefused as e:
        console.print(f"tpworker bench: cannot start: {e}")
        return 2
    first = plans[options.tp[0]][0]
    served = first.engine_args["served_model_name"][0]
    folder = Path(options.out) / (options.name or default_name(served, options.tp))
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    body = make_body(first.engine_args, workload.prompt_tokens)
    warm_page_cache(first.engine_args["model"])
    started = time.time()
    if options.cold_start:
        return cold_starts(options, plans, body, folder, console, served, started, load)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=2,
    ) as progress:
        runs = run_phases(options, workload, routes, plans, body, logs, progress, load)
    result = {
        "name": folder.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(options),
        "wall_s": round(time.time() - started, 1),
        "model": {"served_name": served, "path": first.engine_args["model"]},
        "engine_args": {
            k: v for k, v in first.engine_args.items() if isinstance(v, (str, int, float, bool, list)) or v is None
        },
        "machine": machine.describe(ROOT),
        "load": load.summary(),
        "workload": workload.to_json(),
        "max_concurrency": max_concurrency(options),
        "routes": routes,
        "tp": list(options.tp),
        "runs": runs,
    }
    result["tp_scaling"] = targets.tp_scaling(runs)
    result["targets"] = targets.evaluate(result)
    report.write(result, folder)
    report.show(result, console)
    console.print(f"Results: {folder}/result.json, result.md, tokens_per_s.png")
    failed = any(run["errors"] for run in runs.values()) or not all(
        level["summary"]["complete"]
        for run in runs.values()
        for data in run["routes"].values()
        for level in data["levels"].values()
    )
    return 1 if failed else 0
