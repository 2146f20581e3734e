"""The in-process ASGI call that carries route jobs to vLLM's server application, on a small
FastAPI application (no engine): bodies, statuses, streamed parts one by one, and a closed stream
reaching the application as a client that went away."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tpworker.vllm_bridge.asgi_call import call_asgi


def make_app(log: list):
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        return JSONResponse({"got": await request.json(), "auth": request.headers.get("authorization")}, 201)

    @app.get("/models")
    async def models():
        return {"data": ["m"]}

    @app.post("/stream")
    async def stream():
        async def events():
            try:
                for i in range(1000):
                    yield f"data: {i}\n\n"
                    await asyncio.sleep(0.01)
            finally:
                log.append("stream closed")  # what aborts vLLM's engine request when a client goes away

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/fails")
    async def fails():
        raise RuntimeError("boom")

    return app


async def read(response) -> bytes:
    return b"".join([part async for part in response.body])


def test_a_json_request_and_its_answer():
    async def go():
        app = make_app([])
        answer = await call_asgi(app, "POST", "/echo", {"a": [1, "é"]}, {"Authorization": "Bearer k"})
        assert answer.status == 201 and answer.content_type == "application/json"
        assert await read(answer) == b'{"got":{"a":[1,"\xc3\xa9"]},"auth":"Bearer k"}'
        listing = await call_asgi(app, "GET", "/models", None, {})
        assert (listing.status, await read(listing)) == (200, b'{"data":["m"]}')
        missing = await call_asgi(app, "POST", "/nowhere", {}, {})
        assert (missing.status, await read(missing)) == (404, b'{"detail":"Not Found"}')

    asyncio.run(go())


def test_a_stream_comes_part_by_part_and_closing_it_disconnects_the_client():
    async def go():
        log = []
        answer = await call_asgi(make_app(log), "POST", "/stream", {}, {})
        assert answer.status == 200 and answer.content_type.startswith("text/event-stream")
        parts = []
        async for part in answer.body:
            parts.append(part)
            if len(parts) == 3:
                break
        await answer.body.aclose()
        assert parts == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        for _ in range(100):  # the application notices the disconnect on its own schedule
            if log:
                break
            await asyncio.sleep(0.01)
        assert log == ["stream closed"]

    asyncio.run(go())


def test_an_application_error_is_a_500_answer_not_a_hang():
    async def go():
        answer = await asyncio.wait_for(call_asgi(make_app([]), "POST", "/fails", {}, {}), 10)
        assert answer.status == 500 and await asyncio.wait_for(read(answer), 10) == b"Internal Server Error"

    asyncio.run(go())
