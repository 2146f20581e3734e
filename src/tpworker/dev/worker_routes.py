"""What RunPod's job loop inside the worker talks to (the RUNPOD_WEBHOOK_* URLs): job takes (long
polls), job stops, streamed chunks, results and pings."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tpworker.dev.job_store import DevEndpoint


def worker_router(endpoint: DevEndpoint) -> APIRouter:
    """What RunPod's job loop in the worker talks to (the RUNPOD_WEBHOOK_* URLs)."""
    api = APIRouter(prefix="/worker")

    def jobs_json(data: Any) -> Response:
        # Inputs pass to the worker as the client sent them: json.dumps's defaults escape lone
        # surrogates and keep NaN (which FastAPI's own response encoder refuses), so that the
        # worker, not the dev server, is what judges them.
        return Response(json.dumps(data), media_type="application/json")

    @api.get("/job-take/{worker_id}", response_model=None)
    async def take_one(worker_id: str) -> Response:
        jobs = await endpoint.take(1)
        return jobs_json({"id": jobs[0].id, "input": jobs[0].input}) if jobs else Response(status_code=204)

    @api.get("/job-take-batch/{worker_id}", response_model=None)
    async def take_batch(worker_id: str, batch_size: int = 1) -> Response:
        jobs = await endpoint.take(batch_size)
        return jobs_json([{"id": j.id, "input": j.input} for j in jobs]) if jobs else Response(status_code=204)

    @api.get("/job-stop/{worker_id}", response_model=None)
    async def stops(worker_id: str) -> dict[str, Any] | Response:
        signals = await endpoint.stop_signals()
        return {"jobsToStop": signals} if signals else Response(status_code=204)

    async def posted(request: Request) -> dict[str, Any]:
        # The SDK sends JSON text with a form content type.
        body: dict[str, Any] = json.loads((await request.body()).decode("utf-8"))
        return body

    @api.post("/stream/{job_id}", response_model=None)
    async def stream(job_id: str, request: Request) -> dict[str, Any]:
        job, result = endpoint.jobs.get(job_id), await posted(request)
        if job and job.status == "IN_PROGRESS":
            job.chunks.append(result.get("output"))
            job.touch()
        return {"ok": True}

    @api.post("/done/{job_id}", response_model=None)
    async def done(job_id: str, request: Request) -> dict[str, Any]:
        job, result = endpoint.jobs.get(job_id), await posted(request)
        if job:
            if "error" in result:
                endpoint.finish(job, "FAILED", error=result["error"])
            else:
                endpoint.finish(job, "COMPLETED", output=result.get("output"))
        return {"ok": True}

    @api.get("/ping/{worker_id}", response_model=None)
    async def ping(worker_id: str) -> dict[str, Any]:
        return {"ok": True}

    return api
