"""`tpworker dev`'s job state and routes in process (httpx on the ASGI app), with no worker behind
them: the worker's side of the protocol is played by the test, as RunPod's job loop plays it in
test_dev_endpoint and test_dev_cancel (which run the real worker)."""

from __future__ import annotations

import asyncio
import json

import httpx

from tpworker.dev.job_store import DevEndpoint
from tpworker.dev.server import build_app


def scenario(steps):
    async def main():
        endpoint = DevEndpoint()
        transport = httpx.ASGITransport(app=build_app(endpoint))
        async with httpx.AsyncClient(transport=transport, base_url="http://dev") as client:
            return await steps(endpoint, client)

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_a_job_goes_from_the_queue_to_the_worker_streams_and_completes():
    async def steps(endpoint, client):
        queued = (await client.post("/run", json={"input": {"prompt": "hi"}})).json()
        assert queued["status"] == "IN_QUEUE"
        taken = (await client.get("/worker/job-take/w1")).json()
        assert taken == {"id": queued["id"], "input": {"prompt": "hi"}}
        assert (await client.get(f"/status/{queued['id']}")).json()["status"] == "IN_PROGRESS"
        # RunPod's SDK posts JSON text with a form content type
        await client.post(f"/worker/stream/{queued['id']}", content=json.dumps({"output": {"t": 1}}))
        streamed = (await client.get(f"/v2/dev/stream/{queued['id']}")).json()
        assert streamed["stream"] == [{"output": {"t": 1}}] and streamed["status"] == "IN_PROGRESS"
        await client.post(f"/worker/done/{queued['id']}", content=json.dumps({"output": [{"t": 1}]}))
        done = (await client.get(f"/status/{queued['id']}")).json()
        assert (done["status"], done["output"]) == ("COMPLETED", [{"t": 1}])
        return (await client.get("/health")).json()["jobs"]

    assert scenario(steps) == {"completed": 1, "failed": 0, "retried": 0, "inProgress": 0, "inQueue": 0}


def test_cancelling_a_running_job_tells_the_worker_and_a_queued_one_never_runs():
    async def steps(endpoint, client):
        running = (await client.post("/run", json={"input": {"n": 1}})).json()["id"]
        await client.get("/worker/job-take/w1")
        queued = (await client.post("/run", json={"input": {"n": 2}})).json()["id"]
        cancelled = [(await client.post(f"/cancel/{job}")).json()["status"] for job in (running, queued)]
        stops = (await client.get("/worker/job-stop/w1")).json()
        late = await client.post(f"/worker/done/{running}", content=json.dumps({"output": "late"}))
        status = (await client.get(f"/status/{running}")).json()
        return running, cancelled, stops, late.status_code, status, list(endpoint.queue)

    running, cancelled, stops, late, status, queue = scenario(steps)
    assert cancelled == ["CANCELLED", "CANCELLED"] and stops == {"jobsToStop": [running]}  # the queued one is not
    assert late == 200 and status["status"] == "CANCELLED" and "output" not in status and queue == []


def test_bad_requests_and_unknown_jobs_are_refused_as_runpod_refuses_them():
    async def steps(endpoint, client):
        return [
            await client.get("/status/nope"),
            await client.post("/cancel/nope"),
            await client.get("/stream/nope"),
            await client.post("/run", content=b"{not json"),
            await client.post("/runsync", json={"no": "input"}),
            await client.post("/run", json={"input": {}, "webhook": "http://x"}),
        ]

    answers = scenario(steps)
    assert [a.status_code for a in answers] == [404, 404, 404, 400, 400, 400]
    assert answers[0].json() == {"error": "job nope not found"}
    assert "webhook" in answers[5].json()["error"]


def test_a_failed_job_answers_openai_calls_with_its_own_status():
    async def steps(endpoint, client):
        async def worker():
            job = (await client.get("/worker/job-take/w1")).json()
            error = {"message": "n: 99 is above", "type": "BadRequestError", "param": "n", "code": 400}
            await client.post(f"/worker/done/{job['id']}", content=json.dumps({"error": json.dumps(error)}))

        task = asyncio.ensure_future(worker())
        answer = await client.post("/openai/v1/chat/completions", json={"model": "m", "messages": [], "n": 99})
        await task
        return answer

    answer = scenario(steps)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n"
