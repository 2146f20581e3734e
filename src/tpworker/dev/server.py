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

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from fastapi import FastAPI

from tpworker.dev.client_routes import Refused, client_router, refused_response
from tpworker.dev.job_store import WORKER_TOKEN, DevEndpoint
from tpworker.dev.worker_routes import worker_router

log = logging.getLogger("tpworker.dev")


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
        process = self.process
        if process is not None and process.returncode is None:  # self.running
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()


def _die_with_parent() -> None:
    """In the worker, before exec: get SIGTERM if the dev server dies (Linux), so that no worker
    is left polling a server that is gone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def build_app(
    endpoint: DevEndpoint,
    worker_running: Callable[[], bool] = lambda: True,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    app = FastAPI(title="tpworker dev", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_exception_handler(Refused, refused_response)
    clients = client_router(endpoint, worker_running)
    app.include_router(clients)
    app.include_router(clients, prefix="/v2/{endpoint_id}")
    app.include_router(worker_router(endpoint))
    return app


async def serve(host: str, port: int, handler: Path | None, restart: bool = True) -> None:
    """Serve the endpoint; with `handler` None no worker is started here: one started elsewhere (a
    built image, another machine) with the variables printed takes the jobs."""
    import uvicorn

    endpoint = DevEndpoint()
    base_url = f"http://{host}:{port}"
    worker = WorkerProcess(endpoint, handler, base_url, restart) if handler else None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Started and stopped with the server: uvicorn re-raises SIGTERM once serve() returns,
        # so clean-up placed after it would never run.
        tasks = [asyncio.create_task(endpoint.expire())]
        if worker:
            tasks.append(asyncio.create_task(worker.supervise()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if worker:
                await worker.stop()

    # An outside worker's state is not known here: jobs wait in the queue until it asks for them.
    app = build_app(endpoint, (lambda: worker.running) if worker else (lambda: True), lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    print(
        f"tpworker dev: RunPod endpoint API on {base_url} (also {base_url}/v2/dev), "
        f"OpenAI base URL {base_url}/openai/v1",
        flush=True,
    )
    if not worker:
        print("No worker started here: start one with these variables set (e.g. docker run --network host -e ...):")
        print("\n".join(f"{name}={value}" for name, value in worker_environment(base_url).items()), flush=True)
    await server.serve()


def find_handler(given: str | None) -> Path:
    """handler.py: the one given, else the current folder's, else the repository's."""
    candidates = (
        [Path(given)] if given else [Path.cwd() / "handler.py", Path(__file__).resolve().parents[3] / "handler.py"]
    )
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(f"No handler.py found (looked at {', '.join(map(str, candidates))}); pass --handler.")
