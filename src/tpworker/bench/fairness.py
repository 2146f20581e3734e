"""`tpworker bench --fairness`: does one pathological request in flight slow valid jobs down?

`tpworker dev` (RunPod's endpoint API, `python handler.py` behind it on RunPod's job loop) serves the worker's
default model; every scenario sends the same valid load (short chat and prompt jobs, CONCURRENCY clients each
sending its next job when its last completed) while one hostile request is in flight: a regex of nested
quantifiers, a JSON schema nested as deep as the worker and vLLM accept, prompts that fill the context sent back
to back, n x max_tokens at the limits; a baseline first and last. A hostile request still running when the load ends is
cancelled, and the next scenario waits until the endpoint reports the worker idle and its processes' CPU use is
back to what it was idle. fairness_jobs.py holds what is sent, fairness_report.py the figures and reports."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from tpworker.bench import fairness_report, machine
from tpworker.bench.cpu_quiet import IDLE_CORES, CpuQuiet
from tpworker.bench.fairness_jobs import measure_sizes, scenarios, valid_job

if TYPE_CHECKING:
    from rich.console import Console

CONCURRENCY = 4  # valid clients
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
JOB_SECONDS = 900.0  # a valid job not final by then is cancelled and counted as failed (TIMEOUT)
START_SECONDS = 900.0
SETTLE_SECONDS = 900.0  # after a cancelled request: how long to wait for the worker to be quiet again
WORKER_ENV = {"MAX_MODEL_LEN": "2048", "KV_CACHE_MEMORY_BYTES": "1G", "MAX_CONCURRENCY": "8", "MAX_N": "16"}

now = time.perf_counter

Job = dict[str, Any]  # a job's record (run_job), or a job's input: JSON
Load = Callable[[], Awaitable[list[Job]]]  # the valid load of one scenario
Quiet = Callable[[float], Awaitable[bool]]  # waits (at most the seconds given) until the worker's CPU is idle


class Client:
    """RunPod's endpoint API as a client uses it: /run, /stream (long polls) until final, /cancel, /health."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def submit(self, job_input: Job) -> str:
        job_id: str = (await self.http.post("/run", json={"input": job_input})).json()["id"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        shown: dict[str, Any] = (await self.http.get(f"/status/{job_id}")).json()
        return shown

    async def final(self, job_id: str, seconds: float) -> dict[str, Any]:
        """The job's view once it is final, or the last seen after `seconds`."""
        deadline = now() + seconds
        while True:
            shown: dict[str, Any] = (await self.http.get(f"/stream/{job_id}")).json()
            if shown["status"] in FINAL or now() > deadline:
                return shown

    async def runsync(self, job_input: Job) -> dict[str, Any]:
        job_id = await self.submit(job_input)
        await self.final(job_id, 120)
        return await self.status(job_id)

    async def cancel(self, job_id: str) -> None:
        await self.http.post(f"/cancel/{job_id}")

    async def idle(self) -> bool:
        shown = (await self.http.get("/health")).json()
        idle: bool = shown["workers"]["idle"] >= 1 and shown["jobs"]["inProgress"] == shown["jobs"]["inQueue"] == 0
        return idle


async def run_job(client: Client, kind: str, job_input: Job, began: float, seconds: float = JOB_SECONDS) -> Job:
    """One job, submit to final: its status, latency (s) and error."""
    sent = now()
    job_id = await client.submit(job_input)
    shown = await client.final(job_id, seconds)
    status = shown["status"]
    if status not in FINAL:
        await client.cancel(job_id)
        status = "TIMEOUT"
    record: Job = {"kind": kind, "id": job_id, "status": status, "at_s": round(sent - began, 3)}
    record["latency_s"] = round(now() - sent, 3)
    record["queued_ms"], record["executed_ms"] = shown.get("delayTime"), shown.get("executionTime")
    if shown.get("error") is not None:
        record["error"] = str(shown["error"])[:500]
    return record


async def valid_load(client: Client, jobs: int, began: float, concurrency: int = CONCURRENCY) -> list[Job]:
    indexes = iter(range(jobs))
    records: list[Job | None] = [None] * jobs

    async def one_client() -> None:
        for index in indexes:  # shared: each client takes the next job when its last one is done
            records[index] = await run_job(client, *valid_job(index), began)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return cast(list[Job], records)  # the clients filled every index


async def single(client: Client, job_input: Job, load: Load, head_start: float = 0.0) -> tuple[list[Job], Job]:
    """The hostile request first (taken by the worker), `head_start` seconds alone (a costly request costs
    more the longer it runs: a regex's mask at every token, n sequences' KV cache), then the load while it is
    in flight, then its outcome."""
    sent = now()
    job_id = await client.submit(job_input)
    while (await client.status(job_id))["status"] == "IN_QUEUE" and now() - sent < 60:
        await asyncio.sleep(0.05)

    async def watch() -> tuple[dict[str, Any], float]:
        return await client.final(job_id, float("inf")), now()

    watcher = asyncio.create_task(watch())
    await asyncio.wait([watcher], timeout=head_start)
    valid = await load()
    outcome: dict[str, Any] = {"id": job_id, "load_ended_s": round(now() - sent, 2)}
    if watcher.done():
        shown, ended = watcher.result()
        kind = {"COMPLETED": "completed", "FAILED": "refused"}.get(shown["status"], shown["status"].lower())
        outcome.update(outcome=kind, status=shown["status"], seconds=round(ended - sent, 2))
        if shown.get("error") is not None:
            outcome["error"] = str(shown["error"])[:1000]
    else:
        watcher.cancel()
        await client.cancel(job_id)
        outcome.update(outcome="running", status="CANCELLED", seconds=round(now() - sent, 2))
    return valid, outcome


async def repeated(client: Client, make_input: Callable[[int], Job], load: Load) -> tuple[list[Job], Job]:
    """The hostile request sent back to back by one more client while the load runs."""
    began, done = now(), asyncio.Event()
    jobs: list[Job] = []

    async def repeat() -> None:
        while not done.is_set():
            jobs.append(await run_job(client, "context-limit", make_input(len(jobs)), began, 120))
            if jobs[-1]["status"] != "COMPLETED":
                await asyncio.sleep(1)  # refused: keep asking, but not in a tight loop

    repeater = asyncio.create_task(repeat())
    valid = await load()
    done.set()
    await repeater
    return valid, {"outcome": "repeated", "jobs": jobs}


async def settle(client: Client, quiet: Quiet | None = None) -> dict[str, Any]:
    """Until the endpoint reports the worker idle, then (quiet) until its processes' CPU use is back to idle."""
    began = now()
    while not await client.idle() and now() - began < SETTLE_SECONDS:
        await asyncio.sleep(0.5)
    settled: dict[str, Any] = {"idle_after_s": round(now() - began, 2)}
    if quiet is not None:
        settled["quiet"] = await quiet(SETTLE_SECONDS - (now() - began))
        settled["quiet_after_s"] = round(now() - began, 2)
    return settled


async def run_scenarios(
    client: Client,
    jobs: int,
    sizes: dict[str, Any],
    quiet: Quiet | None = None,
    log: Callable[[str], object] = print,
    head_start: float = 0.0,
    only: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Every scenario in order, or (only) the baselines and the hostile ones named."""
    done: list[dict[str, Any]] = []
    for name, what, kind, job_input in scenarios(sizes):
        if only and kind is not None and name not in only:
            continue
        log(f"{name}: {what} ...")
        began = now()

        def load(began: float = began) -> Awaitable[list[Job]]:
            return valid_load(client, jobs, began)

        outcome: Job | None
        if kind == "single":  # its input, a job's
            valid, outcome = await single(client, cast(Job, job_input), load, head_start)
        elif kind == "repeated":  # its input maker
            valid, outcome = await repeated(client, cast(Callable[[int], Job], job_input), load)
        else:
            valid, outcome = await load(), None
        scenario: dict[str, Any] = {"name": name, "what": what, "valid": valid, "pathological": outcome}
        scenario["wall_s"] = round(now() - began, 2)
        scenario["settle"] = await settle(client, quiet)
        done.append(scenario)
        log(f"  {fairness_report.one_line(scenario, done[0])}")
    return done


def worker_environment(options: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """The dev server's environment (the worker inherits it), and the worker's variables in it to record:
    its own, worker-vllm's, vLLM's engine arguments (imports vLLM's arguments) and VLLM_*, secrets masked."""
    from dataclasses import fields

    from vllm import AsyncEngineArgs

    from tpworker.config import variables

    env = {**os.environ, **WORKER_ENV, "TENSOR_PARALLEL_SIZE": str(options.tp[0])}
    if options.model:
        env.pop("MODEL", None)
        env["MODEL_NAME"] = options.model
    known = {variables.variable_name(name) for name in variables.WorkerSettings.model_fields}
    known |= {*variables.ALIASES, *variables.VLLM_ALIASES, *variables.OTHER_VARIABLES}
    known |= {variables.variable_name(field.name) for field in fields(AsyncEngineArgs)}
    recorded = {k: variables.masked(k, v) for k, v in sorted(env.items()) if k in known or k.startswith("VLLM_")}
    return env, recorded


def default_name() -> str:
    from tpworker.planning import hardware

    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(R\)|\(TM\)", "", hardware.cpu_model()).lower()).strip("-")
    return f"fairness-{slug}-{len(os.sched_getaffinity(0))}c"


def command_line(options: argparse.Namespace) -> str:
    parts = ["tpworker bench --fairness", f"--tp {options.tp[0]}", f"--fairness-jobs {options.fairness_jobs}"]
    parts += [f"--fairness-head-start {options.fairness_head_start:g}"]
    parts += [f"--fairness-only {','.join(options.fairness_only)}"] if options.fairness_only else []
    parts += [f"--model {options.model}"] if options.model else []
    parts += [f"--handler {options.handler}"] if options.handler else []
    return " ".join(parts + ([f"--name {options.name}"] if options.name else []))


async def bench(
    url: str, server: subprocess.Popen[bytes], options: argparse.Namespace, console: Console, load: machine.LoadWatch
) -> dict[str, Any]:
    def log(text: str) -> None:
        load.sample()
        console.print(text)

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        client, began = Client(http), now()
        while True:  # the worker is up once it asks for jobs (after its engine's start and warm-up)
            if server.poll() is not None:
                raise RuntimeError(f"tpworker dev exited with status {server.returncode}")
            try:
                if (await http.get("/health")).json()["workers"]["idle"] >= 1:
                    break
            except httpx.HTTPError:
                pass
            if now() - began > START_SECONDS:
                raise RuntimeError(f"the worker did not start within {START_SECONDS:.0f} s")
            await asyncio.sleep(1)
        console.print(f"Worker ready in {now() - began:.0f} s; warming up and measuring token counts ...")
        sizes = await measure_sizes(client)
        await valid_load(client, CONCURRENCY, now())  # unmeasured: the first jobs of each kind
        quiet = CpuQuiet(server.pid)
        # Until three seconds in a row are quiet (the worker's start-up tail: the structured-output probe
        # process starts once it has warmed up), at most a minute; the quietest second is the idle level.
        samples: list[float] = []
        deadline = now() + 60
        while now() < deadline and not (len(samples) >= 3 and max(samples[-3:]) < IDLE_CORES):
            samples.append(await quiet.cores(1.0))
        quiet.idle_cores = min(samples)
        return {
            "sizes": sizes,
            "idle_cpu_cores": round(quiet.idle_cores, 2),
            "scenarios": await run_scenarios(
                client, options.fairness_jobs, sizes, quiet, log, options.fairness_head_start, options.fairness_only
            ),
        }


def main(options: argparse.Namespace, console: Console) -> int:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    # SIGTERM as an exception, so that the dev server (a session of its own) is stopped below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env, variables = worker_environment(options)
    folder = Path(options.out) / (options.name or default_name())
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    from tpworker.bench.phase import free_port

    port, load, started = free_port(), machine.LoadWatch(), time.time()
    command = [sys.executable, "-m", "tpworker", "dev", "--port", str(port), "--handler", str(options.handler_path)]
    console.print(f"Starting tpworker dev (TP={options.tp[0]}; log: {folder / 'logs' / 'dev.log'}) ...")
    with open(folder / "logs" / "dev.log", "w") as log:
        server = subprocess.Popen(
            command + ["--no-restart"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        measured = asyncio.run(bench(f"http://127.0.0.1:{port}", server, options, console, load))
    except Exception as e:  # the bench itself broke: nothing to report but why
        console.print(f"[red]tpworker bench --fairness: {type(e).__name__}: {e} (log: {folder / 'logs' / 'dev.log'})")
        return 1
    finally:
        load.sample()
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the dev server, then anything left of its group
            try:
                os.killpg(server.pid, sig)
                server.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    result = {
        "name": folder.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(options),
        "wall_s": round(time.time() - started, 1),
        "machine": machine.describe(Path(__file__).resolve().parents[3]),
        "load": load.summary(),
        "handler": str(options.handler_path),
        "worker_variables": variables,
        "valid_jobs": options.fairness_jobs,
        "head_start_s": options.fairness_head_start,
        "concurrency": CONCURRENCY,
        **measured,
    }
    fairness_report.write(result, folder)
    console.print(fairness_report.markdown(result))
    console.print(f"Results: {folder}/fairness.json, fairness.md")
    return 0
