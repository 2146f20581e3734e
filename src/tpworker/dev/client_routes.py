"""RunPod's endpoint API as clients see it (/run, /runsync, /stream, /status, /cancel, /health,
/purge-queue), and RunPod's gateway (/openai/<route>: every route the worker serves), over the dev endpoint's jobs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tpworker.dev.job_store import FINAL, RUNSYNC_WAIT_SECONDS, STREAM_WAIT_SECONDS, DevEndpoint, Job, openai_error
from tpworker.serving.job_input import ROUTES


class Refused(Exception):
    """A client request the endpoint refuses: answered with `status` and {"error": message}, as RunPod does."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def refused_response(_request: Request, error: Exception) -> JSONResponse:
    """Starlette calls it with Refused only (the class it is registered for)."""
    refused = cast(Refused, error)
    return JSONResponse({"error": refused.message}, status_code=refused.status)


def client_router(endpoint: DevEndpoint, worker_running: Callable[[], bool]) -> APIRouter:
    """RunPod's endpoint API, as clients see it."""
    api = APIRouter()

    def job_or_404(job_id: str) -> Job:
        job = endpoint.jobs.get(job_id)
        if job is None:
            raise Refused(404, f"job {job_id} not found")
        return job

    async def submitted(request: Request) -> Job:
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
            raise Refused(400, "The request body is not JSON (or is nested too deeply).") from None
        if not isinstance(body, dict) or "input" not in body:
            raise Refused(400, "The request needs an 'input'.")
        if body.get("webhook"):
            raise Refused(400, "tpworker dev does not call webhooks; poll /status or /stream.")
        return endpoint.submit(body["input"], body.get("policy"))

    @api.post("/run", response_model=None)
    async def run(request: Request) -> dict[str, Any]:
        job = await submitted(request)
        return {"id": job.id, "status": job.status}

    @api.post("/runsync", response_model=None)
    async def runsync(request: Request, wait: int | None = None) -> dict[str, Any]:
        job = await submitted(request)
        await endpoint.wait(job, (wait / 1000) if wait else RUNSYNC_WAIT_SECONDS)
        return job.view()

    @api.get("/status/{job_id}", response_model=None)
    async def status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).view()

    @api.get("/stream/{job_id}", response_model=None)
    async def stream(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        await endpoint.wait(job, STREAM_WAIT_SECONDS, for_chunk=True)
        new = job.chunks[job.streamed :]
        job.streamed += len(new)
        shown = job.view(with_output=False)
        shown["stream"] = [{"output": chunk} for chunk in new]
        return shown

    @api.post("/cancel/{job_id}", response_model=None)
    async def cancel(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        endpoint.stop(job, "CANCELLED")
        return {"id": job.id, "status": job.status}

    @api.get("/health", response_model=None)
    async def health() -> dict[str, Any]:
        return endpoint.health(worker_running())

    @api.post("/purge-queue", response_model=None)
    async def purge_queue() -> dict[str, Any]:
        removed = 0
        while endpoint.queue:
            endpoint.finish(endpoint.jobs[endpoint.queue.popleft()], "CANCELLED")
            removed += 1
        return {"removed": removed, "status": "completed"}

    async def openai(route: str, body: dict[str, Any] | None) -> Response:
        job = endpoint.submit({"openai_route": route, "openai_input": body})
        if isinstance(body, dict) and body.get("stream") is True:
            await endpoint.wait(job, RUNSYNC_WAIT_SECONDS, for_chunk=True)
            if job.status in FINAL and not job.chunks:
                return _error_response(route, job)
            return StreamingResponse(_sse(endpoint, job), media_type="text/event-stream")
        await endpoint.wait(job, 3600)
        if job.status != "COMPLETED":
            return _error_response(route, job)
        output = job.output[0] if isinstance(job.output, list) and job.output else job.output
        return JSONResponse(output)

    async def call(route: str, request: Request) -> Response:
        """The gateway's /openai/<route>: the body (none for GET) becomes the job's openai_input."""
        if ROUTES.get(f"/{route}") != "POST":
            return await openai(f"/{route}", None)  # the worker refuses an unknown route by name
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            error = {"message": "The request body must be a JSON object (valid UTF-8 JSON).", "type": "BadRequestError"}
            return JSONResponse({"error": {**error, "param": None, "code": 400}}, status_code=400)
        return await openai(f"/{route}", body)

    api.add_api_route("/openai/{route:path}", call, methods=["GET", "POST"])
    return api


def _error_response(route: str, job: Job) -> JSONResponse:
    """A failed job's error with its status, in the shape of the route's API (Anthropic's for /v1/messages)."""
    error, code = openai_error(job)
    if route.startswith("/v1/messages"):
        error = {"type": "error", "error": {"type": error["error"]["type"], "message": error["error"]["message"]}}
    return JSONResponse(error, status_code=code)


async def _sse(endpoint: DevEndpoint, job: Job) -> AsyncIterator[str]:
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
