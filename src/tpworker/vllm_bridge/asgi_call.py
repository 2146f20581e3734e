"""One HTTP request to an ASGI application, called in this process and event loop (no socket).

httpx's ASGITransport would do, but it reads the whole body before it returns: a streamed answer
must come out event by event, and closing it must reach the application as a client that went
away (vLLM aborts the engine request then)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Scope


@dataclass
class AsgiResponse:
    status: int
    content_type: str
    body: AsyncGenerator[bytes, None]  # the body's parts as the application sends them


async def call_asgi(
    app: ASGIApp, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> AsgiResponse:
    """Start the request; return once the application has sent its status and headers."""
    payload = b"" if body is None else json.dumps(body).encode()
    header_list = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    header_list += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    messages: asyncio.Queue[Message] = asyncio.Queue()
    gone = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await gone.wait()  # the request stays connected until its reader closes the body
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception as error:  # Starlette sends its 500 first, then raises again
            await messages.put({"type": "error", "error": error})
        finally:
            await messages.put({"type": "http.response.body", "body": b"", "more_body": False})

    task = asyncio.ensure_future(run())
    try:
        start = await messages.get()
    except asyncio.CancelledError:  # the caller gave up before the answer began: a client that went away
        gone.set()
        task.cancel()  # cancels vLLM's handler, which aborts its engine request
        raise
    if start["type"] == "error":
        gone.set()
        raise start["error"]
    response_headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}

    async def parts() -> AsyncGenerator[bytes, None]:
        try:
            while True:
                message = await messages.get()
                if message["type"] == "error":
                    continue  # the response was sent; Starlette only re-raises it
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
        finally:
            gone.set()
            if not task.done():
                await asyncio.wait([task], timeout=5)

    return AsgiResponse(start["status"], response_headers.get("content-type", ""), parts())
