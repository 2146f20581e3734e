"""The worker over direct HTTP (a RunPod load-balancing endpoint): the ASGI application in front of the worker.

- `GET /ping` answers from the worker's state: 204 while it starts and warms up, 200 when it serves, 503 with
  the cause when its start was refused, while it drains after SIGTERM, and when its engine has stopped;
- `POST /job` takes a native job (the `input` object of a queue job: prompt or messages, sampling_params, ...)
  and answers with its outputs, or streams them as server-sent events when the input says `"stream": true`;
- every other route is vLLM's own application (`vllm serve`'s OpenAI, Anthropic, tokenizer and pooling routes)
  on the worker's engine, with the worker's limits (vllm_bridge/openai_server.LimitedEngineClient).

Before a request reaches either: API_KEY (when set) as a bearer token, at most MAX_CONCURRENCY requests in
flight (beyond that 429 with Retry-After, instead of a queue without bound) and HTTP_REQUEST_TIMEOUT (below the
524 RunPod answers at about 5.5 minutes). A client that disconnects ends its request: vLLM's routes abort the
engine request, and the native route's generator is closed, which aborts it in the worker."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpworker.serving.lifecycle import Lifecycle, State

if TYPE_CHECKING:
    from tpworker.serving.worker import Worker

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

NATIVE_ROUTE = "/job"
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class FrontLimits:
    max_in_flight: int  # MAX_CONCURRENCY
    timeout_s: float  # HTTP_REQUEST_TIMEOUT
    api_key: str | None  # API_KEY


class Front:
    def __init__(self, lifecycle: Lifecycle, limits: FrontLimits) -> None:
        self.lifecycle, self.limits = lifecycle, limits
        self.worker: Worker | None = None  # set once the worker has started
        self.refusal: str | None = None  # the cause of a refused start, answered to every request
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/ping":
            await self.ping(send)
            return
        if self.limits.api_key and not _authorized(scope, self.limits.api_key):
            await _error(send, 401, "Missing or wrong API key: send Authorization: Bearer <API_KEY> (or x-api-key).")
            return
        if (unavailable := self._unavailable()) is not None:
            await _error(send, 503, unavailable, retry_after=self.lifecycle.state is not State.REFUSED)
            return
        if self.in_flight >= self.limits.max_in_flight:
            message = f"The worker is running {self.in_flight} requests, its MAX_CONCURRENCY; retry shortly."
            await _error(send, 429, message, retry_after=True)
            return
        self.in_flight += 1
        try:
            await self._within_the_deadline(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def ping(self, send: Send) -> None:
        state = self.lifecycle.state
        if state is State.SERVING:
            await _respond(send, 200, {"status": "healthy"})
        elif state in (State.STARTING, State.WARMING_UP) and self.refusal is None:
            await _respond(send, 204, None)
        else:
            await _error(send, 503, self._unavailable() or f"The worker is {state.value}.")

    def _unavailable(self) -> str | None:
        state = self.lifecycle.state
        if self.refusal is not None:
            return f"The worker cannot start: {self.refusal}"
        if state in (State.STARTING, State.WARMING_UP) or self.worker is None:
            return "The worker is starting; retry when GET /ping answers 200."
        if state is State.DRAINING:
            return "The worker is shutting down (SIGTERM); retry the request elsewhere."
        if state is State.STOPPED:
            return "The worker's engine has stopped; retry the request elsewhere."
        return None

    async def _within_the_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self._route(scope, receive, tracked), self.limits.timeout_s)
        except TimeoutError:
            if not started:
                seconds = f"{self.limits.timeout_s:g}"
                await _error(send, 504, f"The request ran past HTTP_REQUEST_TIMEOUT ({seconds} s) and was stopped.")

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.worker is not None
        if scope["path"] == NATIVE_ROUTE:
            await self._native(scope, receive, send)
            return
        server = await self.worker.openai.server()
        await server.app(scope, receive, send)

    async def _native(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.worker is not None
        if scope["method"] != "POST":
            await _error(send, 405, f"{NATIVE_ROUTE} takes POST with a job's input as its JSON body.")
            return
        try:
            job_input = json.loads(await _body(receive))
        except ValueError as e:
            await _error(send, 400, f"The body is not JSON: {e}")
            return
        stream = isinstance(job_input, dict) and bool(job_input.get("stream"))
        outputs = self.worker.handle({"id": f"http-{uuid.uuid4().hex[:12]}", "input": job_input})
        if not stream:
            chunks = [chunk async for chunk in outputs]
            error = next((c["error"] for c in chunks if isinstance(c, dict) and "error" in c), None)
            await _respond(send, int(error["code"]) if error else 200, {"output": chunks})
            return
        await send({"type": "http.response.start", "status": 200, "headers": _headers("text/event-stream")})
        try:
            async for chunk in outputs:
                await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            await outputs.aclose()  # a client gone mid-stream: the job is aborted in the worker


def _authorized(scope: Scope, api_key: str) -> bool:
    """Authorization: Bearer <key> (OpenAI's clients), or x-api-key: <key> (Anthropic's)."""
    headers = dict(scope.get("headers") or [])
    bearer = headers.get(b"authorization", b"").decode(errors="replace")
    anthropic = headers.get(b"x-api-key", b"").decode(errors="replace")
    return secrets.compare_digest(bearer, f"Bearer {api_key}") or secrets.compare_digest(anthropic, api_key)


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _headers(content_type: str, retry_after: bool = False) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode())]
    return headers + ([(b"retry-after", str(RETRY_AFTER_S).encode())] if retry_after else [])


def _event(chunk: Any) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _respond(send: Send, status: int, body: Any, retry_after: bool = False) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _headers("application/json", retry_after)})
    await send({"type": "http.response.body", "body": b"" if body is None else json.dumps(body).encode()})


async def _error(send: Send, status: int, message: str, retry_after: bool = False) -> None:
    kinds = {401: "AuthenticationError", 429: "RateLimitError", 503: "ServiceUnavailableError", 504: "TimeoutError"}
    error = {"message": message, "type": kinds.get(status, "BadRequestError"), "param": None, "code": status}
    await _respond(send, status, {"error": error}, retry_after)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
