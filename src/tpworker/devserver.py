"""`tpworker dev`: a local copy of a RunPod serverless endpoint, with the real worker behind it.

Clients see RunPod's endpoint API on 127.0.0.1: POST /run, POST /runsync, GET /stream/{id},
GET /status/{id}, POST /cancel/{id}, GET /health, POST /purge-queue, and the OpenAI-compatible
/openai/v1/{chat/completions, completions, responses, models} (each also under /v2/{endpoint}/,
so RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:PORT/v2 points RunPod's own client SDK here).

Behind it, `python handler.py` runs with the RUNPOD_WEBHOOK_* variables pointing at this server,
so the worker runs RunPod's production job loop (the SDK's JobScaler): it takes jobs by long-poll
up to its concurrency, posts every streamed chunk and the final result, and stops a job when the
/job-stop/ channel names it, exactly as on RunPod. If the worker process exits, its in-flight
jobs fail and a new worker is started (as RunPod replaces a dead worker).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("tpworker.dev")

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
WORKER_TOKEN = "tpworker-dev"
LONG_POLL_SECONDS = 5.0  # how long job-take and job-stop hold a request open
STREAM_WAIT_SECONDS = 2.0  # how long /stream waits for a new chunk (RunPod's client times out at 10 s)
RUNSYNC_WAIT_SECONDS = 90.0


@dataclass
class Job:
    id: str
    input: Any
    policy: dict = field(default_factory=dict)
    status: str = "IN_QUEUE"
    chunks: list = field(default_factory=list)  # every streamed chunk, in order
    streamed: int = 0  # chunks already handed out by /stream
    output: Any = None
    error: Any = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Wake everyone waiting on this job (they re-check, then wait on a fresh event)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def view(self, *, with_output: bool = True) -> dict:
        """The job as RunPod's /status shows it."""
        shown: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started:
            shown["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished and self.started:
            shown["executionTime"] = int((self.finished - self.started) * 1000)
        if with_output and self.status == "COMPLETED":
            shown["output"] = self.output
        if self.error is not None:
            shown["error"] = self.error
        return shown


def openai_error(job: Job) -> tuple[dict, int]:
    """OpenAI's error object and HTTP status from a failed job. RunPod's SDK reports a yielded
    {"error": {...}} as the str() of that dict; recover it."""
    error = job.error
    if isinstance(error, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                error = parse(error)
                break
            except (ValueError, SyntaxError):
                continue
    if isinstance(error, dict) and "message" in error:
        code = error.get("code") if isinstance(error.get("code"), int) else 500
        return {"error": error}, code
    status = {"TIMED_OUT": 504, "CANCELLED": 499}.get(job.status, 500)
    return {
        "error": {"message": str(error or job.status), "type": "InternalServerError", "param": None, "code": status}
    }, status


class DevEndpoint:
    """The endpoint's state: jobs, the queue the worker takes from, and the stop channel."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.queued = asyncio.Event()
        self.stops: list[str] = []
        self.stopping = asyncio.Event()
        self.counts = {"completed": 0, "failed": 0, "retried": 0}
        self.worker_polls = 0  # job-take requests seen: the worker is up once it polls
        self.worker_exits: list[int] = []

    # ------------------------------------------------------------------ jobs

    def submit(self, job_input: Any, policy: dict | None = None) -> Job:
        job = Job(id=f"dev-{uuid.uuid4()}", input=job_input, policy=policy or {})
        self.jobs[job.id] = job
        self.queue.append(job.id)
        self.queued.set()
        return job

    def finish(self, job: Job, status: str, output: Any = None, error: Any = None) -> None:
        if job.status in FINAL:
            return
        job.status, job.output, job.error, job.finished = status, output, error, time.time()
        if status == "COMPLETED":
            self.counts["completed"] += 1
        elif status == "FAILED":
            self.counts["failed"] += 1
        job.touch()

    def stop(self, job: Job, status: str) -> None:
        """Cancel or time out a job: take it off the queue, or tell the worker to stop it."""
        if job.status in FINAL:
            return
        if job.id in self.queue:
            self.queue.remove(job.id)
        elif job.status == "IN_PROGRESS":
            self.stops.append(job.id)
            self.stopping.set()
        self.finish(job, status)

    async def wait(self, job: Job, seconds: float, *, for_chunk: bool = False) -> None:
        """Until the job is final (or has an unread chunk), at most `seconds`."""
        deadline = time.monotonic() + seconds
        while job.status not in FINAL and not (for_chunk and len(job.chunks) > job.streamed):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(job.changed.wait(), left)
            except TimeoutError:
                return

    async def expire(self) -> None:
        """Jobs past their policy's executionTimeout (ms) are stopped, as RunPod does."""
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for job in list(self.jobs.values()):
                limit = job.policy.get("executionTimeout")
                if job.status == "IN_PROGRESS" and limit and now - job.started > limit / 1000:
                    self.stop(job, "TIMED_OUT")

    def worker_exited(self, code: int) -> None:
        self.worker_exits.append(code)
        self.worker_polls = 0
        for job in self.jobs.values():
            if job.status == "IN_PROGRESS":
                self.finish(job, "FAILED", error=f"The worker exited (status {code}) while running this job.")

    def health(self, worker_running: bool) -> dict:
        states = [j.status for j in self.jobs.values()]
        ready = worker_running and self.worker_polls > 0
        return {
            "jobs": {**self.counts, "inProgress": states.count("IN_PROGRESS"), "inQueue": len(self.queue)},
            "workers": {
                "idle": int(ready and "IN_PROGRESS" not in states),
                "running": int(ready and "IN_PROGRESS" in states),
                "initializing": int(worker_running and not ready),
                "unhealthy": len(self.worker_exits),
            },
        }

    # ------------------------------------------------------------------ worker side

    async def take(self, count: int) -> list[Job]:
        self.worker_polls += 1
        deadline = time.monotonic() + LONG_POLL_SECONDS
        while not self.queue:
            self.queued.clear()
            try:
                await asyncio.wait_for(self.queued.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return []
        taken = []
        while self.queue and len(taken) < count:
            job = self.jobs[self.queue.popleft()]
            job.status, job.started = "IN_PROGRESS", time.time()
            job.touch()
            taken.append(job)
        return taken

    async def stop_signals(self) -> list[str]:
        if not self.stops:
            self.stopping.clear()
            try:
                await asyncio.wait_for(self.stopping.wait(), LONG_POLL_SECONDS)
            except TimeoutError:
                return []
        signals, self.stops = self.stops, []
        return signals


def _router(endpoint: DevEndpoint, worker_running) -> APIRouter:
    """RunPod's endpoint API, as clients see it."""
    api = APIRouter()

    def job_or_404(job_id: str) -> Job | JSONResponse:
        job = endpoint.jobs.get(job_id)
        return job if job else JSONResponse({"error": f"job {job_id} not found"}, status_code=404)

    async def submitted(request: Request) -> Job | JSONResponse:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
            return JSONResponse({"error": "The request body is not JSON (or is nested too deeply)."}, status_code=400)
        if not isinstance(body, dict) or "input" not in body:
            return JSONResponse({"error": "The request needs an 'input'."}, status_code=400)
        if body.get("webhook"):
            return JSONResponse(
                {"error": "tpworker dev does not call webhooks; poll /status or /stream."}, status_code=400
            )
        return endpoint.submit(body["input"], body.get("policy"))

    @api.post("/run")
    async def run(request: Request):
        job = await submitted(request)
        return job if isinstance(job, JSONResponse) else {"id": job.id, "status": job.status}

    @api.post("/runsync")
    async def runsync(request: Request, wait: int | None = None):
        job = await submitted(request)
        if isinstance(job, JSONResponse):
            return job
        await endpoint.wait(job, (wait / 1000) if wait else RUNSYNC_WAIT_SECONDS)
        return job.view()

    @api.get("/status/{job_id}")
    async def status(job_id: str):
        job = job_or_404(job_id)
        return job if isinstance(job, JSONResponse) else job.view()

    @api.get("/stream/{job_id}")
    async def stream(job_id: str):
        job = job_or_404(job_id)
        if isinstance(job, JSONResponse):
            return job
        await endpoint.wait(job, STREAM_WAIT_SECONDS, for_chunk=True)
        new = job.chunks[job.streamed :]
        job.streamed += len(new)
        shown = job.view(with_output=False)
        shown["stream"] = [{"output": chunk} for chunk in new]
        return shown

    @api.post("/cancel/{job_id}")
    async def cancel(job_id: str):
        job = job_or_404(job_id)
        if isinstance(job, JSONResponse):
            return job
        endpoint.stop(job, "CANCELLED")
        return {"id": job.id, "status": job.status}

    @api.get("/health")
    async def health():
        return endpoint.health(worker_running())

    @api.post("/purge-queue")
    async def purge_queue():
        removed = 0
        while endpoint.queue:
            endpoint.finish(endpoint.jobs[endpoint.queue.popleft()], "CANCELLED")
            removed += 1
        return {"removed": removed, "status": "completed"}

    async def openai(route: str, body: dict) -> Response:
        job = endpoint.submit({"openai_route": route, "openai_input": body})
        if body.get("stream") is True:
            await endpoint.wait(job, RUNSYNC_WAIT_SECONDS, for_chunk=True)
            if job.status in FINAL and not job.chunks:
                error, code = openai_error(job)
                return JSONResponse(error, status_code=code)
            return StreamingResponse(_sse(endpoint, job), media_type="text/event-stream")
        await endpoint.wait(job, 3600)
        if job.status != "COMPLETED":
            error, code = openai_error(job)
            return JSONResponse(error, status_code=code)
        output = job.output[0] if isinstance(job.output, list) and job.output else job.output
        return JSONResponse(output)

    @api.get("/openai/v1/models")
    async def models():
        return await openai("/v1/models", {})

    for route in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):

        async def call(request: Request, route: str = route):
            try:
                body = await request.json()
            except (ValueError, RecursionError):
                body = None
            if not isinstance(body, dict):
                return JSONResponse(
                    {
                        "error": {
                            "message": "The request body must be a JSON object (valid UTF-8 JSON).",
                            "type": "BadRequestError",
                            "param": None,
                            "code": 400,
                        }
                    },
                    status_code=400,
                )
            return await openai(route, body)

        api.add_api_route(f"/openai{route}", call, methods=["POST"])
    return api


async def _sse(endpoint: DevEndpoint, job: Job):
    """A job's chunks as one SSE stream, as they arrive; the stream ends with the job."""
    while True:
        await endpoint.wait(job, 3600, for_chunk=True)
        new = job.chunks[job.streamed :]
        job.streamed += len(new)
        for chunk in new:
            if isinstance(chunk, str):
                yield chunk
            else:  # RAW_OPENAI_OUTPUT=false: a list of chunk objects
                for item in chunk if isinstance(chunk, list) else [chunk]:
                    yield f"data: {json.dumps(item)}\n\n"
        if job.status in FINAL and job.streamed >= len(job.chunks):
            if job.status != "COMPLETED":
                error, _ = openai_error(job)
                yield f"data: {json.dumps(error)}\n\n"
            return


def _worker_router(endpoint: DevEndpoint) -> APIRouter:
    """What RunPod's job loop in the worker talks to (the RUNPOD_WEBHOOK_* URLs)."""
    api = APIRouter(prefix="/worker")

    def jobs_json(data) -> Response:
        # Inputs pass to the worker as the client sent them: json.dumps's defaults escape lone
        # surrogates and keep NaN (which FastAPI's own response encoder refuses), so that the
        # worker, not the dev server, is what judges them.
        return Response(json.dumps(data), media_type="application/json")

    @api.get("/job-take/{worker_id}")
    async def take_one(worker_id: str):
        jobs = await endpoint.take(1)
        return jobs_json({"id": jobs[0].id, "input": jobs[0].input}) if jobs else Response(status_code=204)

    @api.get("/job-take-batch/{worker_id}")
    async def take_batch(worker_id: str, batch_size: int = 1):
        jobs = await endpoint.take(batch_size)
        return jobs_json([{"id": j.id, "input": j.input} for j in jobs]) if jobs else Response(status_code=204)

    @api.get("/job-stop/{worker_id}")
    async def stops(worker_id: str):
        signals = await endpoint.stop_signals()
        return {"jobsToStop": signals} if signals else Response(status_code=204)

    async def posted(request: Request) -> dict:
        # The SDK sends JSON text with a form content type.
        return json.loads((await request.body()).decode("utf-8"))

    @api.post("/stream/{job_id}")
    async def stream(job_id: str, request: Request):
        job, result = endpoint.jobs.get(job_id), await posted(request)
        if job and job.status == "IN_PROGRESS":
            job.chunks.append(result.get("output"))
            job.touch()
        return {"ok": True}

    @api.post("/done/{job_id}")
    async def done(job_id: str, request: Request):
        job, result = endpoint.jobs.get(job_id), await posted(request)
        if job:
            if "error" in result:
                endpoint.finish(job, "FAILED", error=result["error"])
            else:
                endpoint.finish(job, "COMPLETED", output=result.get("output"))
        return {"ok": True}

    @api.get("/ping/{worker_id}")
    async def ping(worker_id: str):
        return {"ok": True}

    return api


def worker_environment(base_url: str) -> dict[str, str]:
    """What RunPod sets in a worker's environment, pointed at this server."""
    worker = f"{base_url}/worker"
    query = f"?token={WORKER_TOKEN}"
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{worker}/job-take/$ID{query}",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{worker}/done/$ID{query}",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{worker}/stream/$ID{query}",
        "RUNPOD_WEBHOOK_PING": f"{worker}/ping/$RUNPOD_POD_ID{query}",
        "RUNPOD_POD_ID": "tpworker-dev-worker",
        "RUNPOD_ENDPOINT_ID": "dev",
        # RunPod's start-up fitness checks test the internet and nvidia-smi; neither applies here.
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
    }


class WorkerProcess:
    """`python handler.py` in production mode, restarted when it exits (like RunPod)."""

    def __init__(self, endpoint: DevEndpoint, handler: Path, base_url: str, restart: bool):
        self.endpoint, self.handler, self.base_url, self.restart = endpoint, handler, base_url, restart
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def supervise(self) -> None:
        while True:
            env = {**os.environ, **worker_environment(self.base_url)}
            log.info("Starting the worker: %s %s", sys.executable, self.handler)
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.handler),
                cwd=str(self.handler.parent),
                env=env,
                preexec_fn=_die_with_parent,
            )
            code = await self.process.wait()
            log.warning("The worker exited with status %s.", code)
            self.endpoint.worker_exited(code)
            if not self.restart:
                return
            await asyncio.sleep(1)

    async def stop(self) -> None:
        if self.running:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.kill()


def _die_with_parent() -> None:
    """In the worker, before exec: get SIGTERM if the dev server dies (Linux), so that no worker
    is left polling a server that is gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def build_app(endpoint: DevEndpoint, worker_running=lambda: True, lifespan=None) -> FastAPI:
    app = FastAPI(title="tpworker dev", docs_url=None, redoc_url=None, lifespan=lifespan)
    clients = _router(endpoint, worker_running)
    app.include_router(clients)
    app.include_router(clients, prefix="/v2/{endpoint_id}")
    app.include_router(_worker_router(endpoint))
    return app


async def serve(host: str, port: int, handler: Path, restart: bool = True) -> None:
    import uvicorn

    endpoint = DevEndpoint()
    base_url = f"http://{host}:{port}"
    worker = WorkerProcess(endpoint, handler, base_url, restart)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Started and stopped with the server: uvicorn re-raises SIGTERM once serve() returns,
        # so clean-up placed after it would never run.
        tasks = [asyncio.create_task(worker.supervise()), asyncio.create_task(endpoint.expire())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await worker.stop()

    app = build_app(endpoint, lambda: worker.running, lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    print(
        f"tpworker dev: RunPod endpoint API on {base_url} (also {base_url}/v2/dev), "
        f"OpenAI base URL {base_url}/openai/v1",
        flush=True,
    )
    await server.serve()


def find_handler(given: str | None) -> Path:
    """handler.py: the one given, else the current folder's, else the repository's."""
    candidates = (
        [Path(given)] if given else [Path.cwd() / "handler.py", Path(__file__).resolve().parents[2] / "handler.py"]
    )
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(f"No handler.py found (looked at {', '.join(map(str, candidates))}); pass --handler.")
