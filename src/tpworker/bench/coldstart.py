"""`tpworker bench --cold-start N`: N starts each of the raw engine, the worker, and the worker without
its warm-up, per TP size, interleaved (raw, worker, worker without warm-up, then the next round in a
rotated order), each in a fresh process (`python -m tpworker.bench.coldstart SPEC OUT`).

Each start records its timeline (tpworker.timeline: the worker's marks and vLLM's own start records,
the same for the raw engine), then sends `jobs` streamed requests one after another and records each
one's time to first token. The first request is the cold start's: from the process start (as the OS
recorded it) to its first token. coldstart_report.py turns the starts into the phase table and chart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpworker import timeline
from tpworker.bench import request_paths
from tpworker.bench.workload import Workload, prompt
from tpworker.errors import in_one_line

if TYPE_CHECKING:
    from rich.console import Console

    from tpworker.bench.machine import LoadWatch
    from tpworker.startup.plan import StartPlan
    from tpworker.startup.start import StartedWorker
    from tpworker.vllm_bridge.types import AsyncLLM

KINDS = ("raw", "worker", "worker-no-warmup")
JOBS = 10  # requests after the start: the first against the median of the rest (jobs 2-10)
START_SECONDS = 900


def start_raw(spec: dict[str, Any]) -> AsyncLLM:
    """vLLM's AsyncLLM from the worker's engine arguments, its start records kept as the worker keeps them."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    from tpworker.vllm_bridge import start_records

    timeline.mark("vLLM imported")
    os.environ.update(spec["environment"])  # e.g. VLLM_CPU_OMP_THREADS_BIND, as the worker sets it
    args = AsyncEngineArgs(**pickle.loads(Path(spec["engine_args_file"]).read_bytes()))
    with start_records.kept(args) as records:
        llm = AsyncLLMEngine.from_engine_args(args)
        timeline.mark("engine ready")
        for phase, at, detail in records.marks(spec["tp"]):
            timeline.mark(phase, detail, at)
    return llm


def start_worker(spec: dict[str, Any]) -> tuple[StartedWorker, request_paths.Handler]:
    """The worker as handler.py's main() starts it, and handler.py's handler in front of it."""
    import importlib.util

    from tpworker import app
    from tpworker.config.settings import load_settings
    from tpworker.startup.model_and_layout import plan_layout
    from tpworker.startup.plan import plan_start
    from tpworker.startup.start import start_worker

    settings = load_settings()
    timeline.mark("settings read")
    started = start_worker(settings, plan_start(settings, plan_layout(settings)), watched=False)
    app.set_current_worker(started.worker)
    loader = importlib.util.spec_from_file_location("tpworker_bench_handler", spec["handler"])
    if loader is None or loader.loader is None:
        raise ImportError(f"cannot load {spec['handler']} as a module")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return started, module.handler


async def first_tokens(runner: request_paths.Runner, body: str, jobs: int, tag: str) -> list[float]:
    """Time to first token of `jobs` streamed requests sent one after another, in ms."""
    out: list[float] = []
    for i in range(jobs):
        (timing,) = await request_paths.one_round(runner, [prompt(body, f"{tag} job {i + 1}")], True)
        if timing.error or timing.first is None:
            raise RuntimeError(f"job {i + 1} failed: {timing.error or 'no token came'}")
        if i == 0:
            timeline.mark("first token", "of the first job", at=timing.first + (time.time() - time.perf_counter()))
        out.append((timing.first - timing.sent) * 1000)
    return out


def run_start(spec: dict[str, Any]) -> dict[str, Any]:
    workload = Workload(prompt_tokens=spec["prompt_tokens"], output_tokens=spec["output_tokens"], concurrency=(1,))
    tag = f"{spec['kind']} tp{spec['tp']} start {spec['start']}"
    if spec["kind"] == "raw":
        llm = start_raw(spec)
        try:
            ttft = asyncio.run(first_tokens(request_paths.RawRunner(workload, llm), spec["body"], spec["jobs"], tag))
        finally:
            llm.shutdown()
    else:
        started, handler = start_worker(spec)

        async def serve() -> list[float]:
            if (ready := started.worker.loop_started()) is not None:  # as RunPod's job loop does
                await ready
            return await first_tokens(
                request_paths.HandlerNativeRunner(workload, handler), spec["body"], spec["jobs"], tag
            )

        try:
            ttft = asyncio.run(serve())
        finally:
            started.close()
    return {"phases": timeline.TIMELINE.as_dicts(), "ttft_ms": ttft}


# ------------------------------------------------------------------------------ the parent side


def start_environment(env: dict[str, str], kind: str) -> dict[str, str]:
    env = dict(env)
    if kind == "worker-no-warmup":
        env["ENGINE_WARMUP"] = "false"
    return env


def order(round_index: int) -> tuple[str, ...]:
    """The kinds in a rotating order, so that no kind always starts right after another."""
    shift = round_index % len(KINDS)
    return KINDS[shift:] + KINDS[:shift]


def run_starts(
    options: argparse.Namespace,
    plans: dict[int, tuple[StartPlan, dict[str, str]]],
    body: str,
    folder: Path,
    console: Console,
    load: LoadWatch,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{tp: {kind: [start result, ...]}}, the starts of each TP size run interleaved."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for tp, (plan, env) in plans.items():
        engine_args_file = folder / "logs" / f"tp{tp}-engine-args.pickle"
        engine_args_file.write_bytes(pickle.dumps(plan.engine_args))
        runs[str(tp)] = {kind: [] for kind in KINDS}
        for start in range(options.cold_start):
            for kind in order(start):
                spec = {
                    "kind": kind,
                    "tp": tp,
                    "start": start + 1,
                    "engine_args_file": str(engine_args_file),
                    "environment": plan.environment,
                    "handler": str(options.handler_path),
                    "body": body,
                    "jobs": JOBS,
                    "prompt_tokens": options.prompt_tokens,
                    "output_tokens": options.output_tokens,
                }
                console.print(f"TP={tp} start {start + 1}/{options.cold_start}: {kind} ...")
                result = one_start(spec, start_environment(env, kind), folder / "logs")
                load.sample()
                runs[str(tp)][kind].append(result)
                if "error" in result:
                    console.print(f"  failed: {result['error']}")
                else:
                    first = next(p for p in result["phases"] if p["phase"] == "first token")
                    ttft = [round(t) for t in result["ttft_ms"]]
                    console.print(f"  first token at {first['ends_at']:.1f} s; TTFT ms {ttft}")
    return runs


def one_start(spec: dict[str, Any], env: dict[str, str], logs: Path) -> dict[str, Any]:
    name = f"tp{spec['tp']}-{spec['kind']}-{spec['start']}"
    spec_file, out_file = logs / f"{name}.spec.json", logs / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    with open(logs / f"{name}.log", "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "tpworker.bench.coldstart", str(spec_file), str(out_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its engine's processes in its group, ended with it
        )
        try:
            child.wait(START_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # anything left of it: the next start gets the machine to itself
            except ProcessLookupError:
                pass
            child.wait()
    if not out_file.exists():
        return {"error": f"the start wrote no result within {START_SECONDS} s (log: {log.name})"}
    result: dict[str, Any] = json.loads(out_file.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpworker.bench.coldstart")
    parser.add_argument("spec")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    try:
        result = run_start(spec)
    except BaseException as e:
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {in_one_line(e)}"[:1000]}
    Path(args.out).write_text(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":  # vLLM spawns its processes: starting an engine needs this guard
    sys.exit(main())
