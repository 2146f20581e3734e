"""One process per engine (`python -m tpworker.bench.phase SPEC EVENTS --spawned-at T`).

A phase starts its engine the way its paths start it, measures the cold start (process start ->
first token of one streamed request sent as soon as it can be), reads each rank's weight memory
from the engine, then runs the measured rounds of its routes, interleaved: for each
concurrency level and repetition every route runs one round, in an order that rotates, so that a
slow moment of the machine does not land on one route only. Results go to EVENTS, one JSON
object a line, which the parent (run.py) reads as they come.

Phases: raw (vLLM's AsyncLLM from the engine arguments), handler (the worker built as handler.py
builds it; native and OpenAI jobs through handler.py's handler, and raw-paired: the same AsyncLLM
driven directly, as a baseline measured side by side with them), dev (`tpworker dev` started here;
requests over HTTP), vllm-serve (vLLM's own OpenAI server, through the openai client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tpworker.bench import request_paths
from tpworker.bench.metrics import Timing, round_figures
from tpworker.bench.workload import Workload, prompt
from tpworker.errors import in_one_line

if TYPE_CHECKING:
    from tpworker.serving.worker import Worker
    from tpworker.vllm_bridge.types import AsyncLLM

SERVER_START_SECONDS = 900  # a big model's first start may download or page in many GB


class Events:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        self.file.write(json.dumps({"event": event, **fields}) + "\n")


def wall(perf: float) -> float:
    """perf_counter time -> time.time() (cold starts span processes; rounds use perf_counter)."""
    return perf + (time.time() - time.perf_counter())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------- engines in process


def start_raw(spec: dict[str, Any]) -> AsyncLLM:
    """vLLM's AsyncLLM, straight from the engine arguments the worker would use."""
    from vllm import AsyncEngineArgs, AsyncLLMEngine  # AsyncLLMEngine is vLLM's public name of AsyncLLM

    os.environ.update(spec["environment"])  # e.g. VLLM_CPU_OMP_THREADS_BIND, as the worker sets it
    engine_args = pickle.loads(Path(spec["engine_args_file"]).read_bytes())
    return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args))


def start_worker(spec: dict[str, Any]) -> tuple[Worker, request_paths.Handler]:
    """The worker as handler.py's start builds it (app.main): settings -> plan -> engine -> worker,
    and handler.py's own handler function in front of it."""
    import importlib.util

    from tpworker import app
    from tpworker.config.settings import load_settings
    from tpworker.startup.plan import plan_start
    from tpworker.startup.start import start_worker

    settings = load_settings()
    worker = start_worker(settings, plan_start(settings), watched=False).worker
    app.set_current_worker(worker)  # what handler.py's main() does before RunPod's loop calls handler()
    loader = importlib.util.spec_from_file_location("tpworker_bench_handler", spec["handler"])
    if loader is None or loader.loader is None:
        raise ImportError(f"cannot load {spec['handler']} as a module")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return worker, module.handler


# ------------------------------------------------------------------------- servers in subprocesses


def vllm_serve_flags(engine_args: dict[str, Any]) -> list[str]:
    """The engine arguments as `vllm serve` command-line flags."""
    flags: list[str] = []
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def start_server(spec: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    log = open(Path(spec["log_dir"]) / f"tp{spec['tp']}-{spec['phase']}-server.log", "w")
    env = dict(os.environ)
    if spec["phase"] == "dev":
        command = [
            sys.executable,
            "-m",
            "tpworker",
            "dev",
            "--port",
            str(port),
            "--handler",
            spec["handler"],
            "--no-restart",
        ]
    else:
        env.update(spec["environment"])
        engine_args = pickle.loads(Path(spec["engine_args_file"]).read_bytes())
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *vllm_serve_flags(engine_args),
        ]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def worker_started_at(server: subprocess.Popen[bytes]) -> float:
    """When the dev server's `python handler.py` process started (time.time())."""
    import psutil

    for child in psutil.Process(server.pid).children():
        if any(part.endswith("handler.py") for part in child.cmdline()):
            return child.create_time()
    raise RuntimeError("the dev server runs no handler.py process")


async def first_request(runner: request_paths.Runner, text: str, server: subprocess.Popen[bytes] | None) -> Timing:
    """The cold start's request: sent as soon as the server takes connections."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            return await runner.request(text, stream=True)
        except Exception as e:  # connection refused until the server listens
            if server is None or server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the first request failed: {type(e).__name__}: {e}") from e
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------------- measuring


class CpuMeter:
    """CPU seconds used during the measured rounds by: this process (the benchmark's client; in the
    raw and handler phases also the engine's front end), the server it started (tpworker dev's
    endpoint, or vllm serve's front end), the processes right below the top one (the server, else
    this one): vLLM's engine core, or for dev the worker's `python handler.py`, and those below them.
    On a small machine this says how much the client and the dev server (the user and RunPod's
    cloud, elsewhere in production) take from the engine."""

    def __init__(self, server: subprocess.Popen[bytes] | None) -> None:
        self.me = psutil.Process()
        self.server = psutil.Process(server.pid) if server is not None else None

    @staticmethod
    def _seconds(processes: Iterable[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:  # exited meanwhile
                continue
            total += times.user + times.system
        return total

    def snapshot(self) -> dict[str, float]:
        top = self.server if self.server is not None else self.me
        try:
            direct = top.children()
            below = top.children(recursive=True)
        except psutil.Error:  # the server is gone: nothing below it to count
            direct, below = [], []
        direct_pids = {p.pid for p in direct}
        deeper = [p for p in below if p.pid not in direct_pids]
        groups = {"bench": self._seconds([self.me]), "direct": self._seconds(direct), "deeper": self._seconds(deeper)}
        if self.server is not None:
            groups["server"] = self._seconds([self.server])
        return {"at": time.perf_counter(), **groups}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
        return {
            "wall_s": after["at"] - before["at"],
            "cores": psutil.cpu_count(),
            "seconds": {k: after[k] - before[k] for k in before if k != "at"},
        }


async def measure(
    spec: dict[str, Any],
    runners: dict[str, request_paths.Runner],
    events: Events,
    spawned_at: float,
    llm: AsyncLLM | None = None,
    server: subprocess.Popen[bytes] | None = None,
) -> None:
    workload = Workload.from_json(spec["workload"])
    body, tp = spec["body"], spec["tp"]
    first_route = next(iter(runners))
    timing = await first_request(runners[first_route], prompt(body, f"cold {first_route} tp{tp}"), server)
    if timing.error or timing.first is None:
        raise RuntimeError(f"the first request through {first_route} failed: {timing.error or 'no token came'}")
    cold = {
        "route": first_route,
        "cold_start_s": wall(timing.first) - spawned_at,
        "first_token_ms": (timing.first - timing.sent) * 1000,
    }
    if spec["phase"] == "dev":
        # What RunPod calls the worker's cold start: `python handler.py` (which the dev server
        # starts) to the first token; the dev server's own start is no part of production.
        assert server is not None  # the dev phase measures the server it started
        cold["server_cold_start_s"] = cold["cold_start_s"]
        cold["cold_start_s"] = wall(timing.first) - worker_started_at(server)
    events.emit("cold", **cold)
    if llm is not None:
        from tpworker.vllm_bridge import weights_probe

        events.emit("weights", ranks=await weights_probe.weights_memory_per_rank(llm))
    top = max(workload.concurrency)
    for name, runner in runners.items():
        for w in range(workload.warmup):
            prompts = [prompt(body, f"warm {name} tp{tp} w{w} #{i}") for i in range(top)]
            timings = await request_paths.one_round(runner, prompts, workload.stream)
            events.emit(
                "round",
                route=name,
                concurrency=top,
                rep=w,
                warmup=True,
                figures=round_figures(timings, workload.output_tokens),
            )
    names = list(runners)
    meter = CpuMeter(server)
    before = meter.snapshot()
    for level in workload.concurrency:
        for rep in range(workload.repetitions):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                prompts = [prompt(body, f"{name} tp{tp} c{level} r{rep} #{i}") for i in range(level)]
                timings = await request_paths.one_round(runners[name], prompts, workload.stream)
                events.emit(
                    "round",
                    route=name,
                    concurrency=level,
                    rep=rep,
                    warmup=False,
                    figures=round_figures(timings, workload.output_tokens),
                )
    events.emit("cpu", **CpuMeter.used(before, meter.snapshot()))
    for runner in runners.values():
        await runner.close()


def run_phase(spec: dict[str, Any], events: Events, spawned_at: float) -> None:
    workload = Workload.from_json(spec["workload"])
    routes, kind = spec["routes"], spec["phase"]
    if kind == "raw":
        llm = start_raw(spec)
        try:
            asyncio.run(measure(spec, {"raw": request_paths.RawRunner(workload, llm)}, events, spawned_at, llm=llm))
        finally:
            llm.shutdown()
        return
    if kind == "handler":
        worker, handler = start_worker(spec)
        runners = {  # the first route is the cold start's
            "handler-native": request_paths.HandlerNativeRunner(workload, handler),
            "handler-openai": request_paths.HandlerOpenAIRunner(workload, handler, spec["model"]),
            # the worker's own AsyncLLM driven directly, interleaved with the handler's rounds:
            # the handler's cost without the noise between processes started minutes apart
            "raw-paired": request_paths.RawRunner(workload, worker.engine.llm),
        }
        try:
            asyncio.run(measure(spec, {r: runners[r] for r in routes}, events, spawned_at, llm=worker.engine.llm))
        finally:
            worker.close()
        return
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    spawned_at = time.time()  # the server's own start is the cold start's origin
    server = start_server(spec, port)
    try:
        if kind == "dev":
            runners = {
                "dev-native": request_paths.DevNativeRunner(workload, base_url),
                "dev-openai": request_paths.OpenAIHTTPRunner(workload, f"{base_url}/openai", spec["model"]),
            }
        else:
            runners = {"vllm-serve": request_paths.OpenAIClientRunner(workload, base_url, spec["model"])}
        asyncio.run(measure(spec, {r: runners[r] for r in routes}, events, spawned_at, server=server))
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpworker.bench.phase")
    parser.add_argument("spec")
    parser.add_argument("events")
    parser.add_argument(
        "--spawned-at", type=float, required=True, help="time.time() when the parent started this process"
    )
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    events = Events(args.events)
    try:
        run_phase(spec, events, args.spawned_at)
    except BaseException as e:
        traceback.print_exc()
        events.emit("error", message=f"{type(e).__name__}: {in_one_line(e)}"[:1000])
        return 1
    events.emit("done")
    return 0


if __name__ == "__main__":  # vLLM spawns its processes: starting an engine needs this guard
    sys.exit(main())
