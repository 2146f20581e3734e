"""One runner per path. Each sends one request of the workload its own way and times it.

The client side of every path does as little as it can (no per-event JSON parsing where a
substring test does), because on a small machine the client shares the cores with the engine.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from tpworker.bench.metrics import Timing
from tpworker.bench.workload import Workload

if TYPE_CHECKING:
    import aiohttp

    from tpworker.vllm_bridge.types import AsyncLLM

ROUTES = ("raw", "handler-native", "handler-openai", "dev-native", "dev-openai", "vllm-serve")
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
TAIL = 8192  # characters of an SSE stream kept: enough for its last events (usage, [DONE])

now = time.perf_counter

# handler.py's handler: a job in, its outputs (native chunks, OpenAI objects or SSE text, errors) out.
Handler = Callable[[dict[str, Any]], AsyncIterator[Any]]


class Runner(abc.ABC):
    """Sends one request; `stream` says whether to stream it (the cold start always streams).
    One subclass per path."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.sampling = workload.sampling()
        self._ids = itertools.count()

    def next_id(self) -> str:
        return f"bench-{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    @abc.abstractmethod
    async def request(self, prompt: str, stream: bool) -> Timing:
        """Send one request and time it."""

    async def close(self) -> None:  # noqa: B027 (optional: most runners hold nothing to close)
        pass


class RawRunner(Runner):
    """vLLM's AsyncLLM itself: the baseline every path is compared with."""

    def __init__(self, workload: Workload, llm: AsyncLLM) -> None:
        super().__init__(workload)
        self.llm = llm

    async def request(self, prompt: str, stream: bool) -> Timing:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        params = SamplingParams(**self.sampling, output_kind=kind)
        timing = Timing(sent=now(), done=0.0)
        output = None
        async for output in self.llm.generate({"prompt": prompt}, params, self.next_id()):
            count = len(output.outputs[0].token_ids)
            if stream and count:
                timing.note_arrival()
            timing.tokens = timing.tokens + count if stream else count
        timing.done = now()
        ids = output.prompt_token_ids if output is not None else None
        timing.prompt_tokens = len(ids) if ids is not None else None
        return timing


class HandlerNativeRunner(Runner):
    """handler.py's handler(job), in process, with a native job."""

    def __init__(self, workload: Workload, handler: Handler) -> None:
        super().__init__(workload)
        self.handler = handler

    async def request(self, prompt: str, stream: bool) -> Timing:
        job = {
            "id": self.next_id(),
            "input": {"prompt": prompt, "sampling_params": dict(self.sampling), "stream": stream},
        }
        timing = Timing(sent=now(), done=0.0)
        async for chunk in self.handler(job):
            note_native_chunk(timing, chunk, stream)
        timing.done = now()
        return timing


class HandlerOpenAIRunner(Runner):
    """handler.py's handler(job), in process, with an OpenAI-form job (/v1/completions)."""

    def __init__(self, workload: Workload, handler: Handler, model: str) -> None:
        super().__init__(workload)
        self.handler, self.model = handler, model

    async def request(self, prompt: str, stream: bool) -> Timing:
        body = openai_body(self.model, prompt, self.sampling, stream)
        job = {"id": self.next_id(), "input": {"openai_route": "/v1/completions", "openai_input": body}}
        timing = Timing(sent=now(), done=0.0)
        last = None
        async for output in self.handler(job):
            if isinstance(output, list):  # RAW_OPENAI_OUTPUT=false: chunk objects instead of SSE text
                output = "".join(f"data: {json.dumps(item)}\n\n" for item in output)
            if isinstance(output, str):  # streamed: whole SSE events; usage may be in an earlier yield than [DONE]
                if stream and has_text(output):
                    timing.note_arrival()
                last = (last + output)[-TAIL:] if isinstance(last, str) else output
            else:  # not streamed: the response object, or an error
                last = output
        timing.done = now()
        note_openai_end(timing, last)
        return timing


class DevNativeRunner(Runner):
    """`tpworker dev` over HTTP, as RunPod's clients use an endpoint: POST /run, then GET
    /stream/{id} until the job is final. aiohttp (RunPod's SDK's own client), because this path
    makes several requests per job and httpx costs about three times the CPU per request, which
    on a small machine the engine would lose."""

    def __init__(self, workload: Workload, base_url: str) -> None:
        super().__init__(workload)
        self.base_url = base_url
        self.session: aiohttp.ClientSession | None = None

    async def request(self, prompt: str, stream: bool) -> Timing:
        import aiohttp

        if self.session is None:  # created in the event loop that uses it
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0)
            )
        job = {"input": {"prompt": prompt, "sampling_params": dict(self.sampling), "stream": stream}}
        timing = Timing(sent=now(), done=0.0)
        async with self.session.post(f"{self.base_url}/run", json=job) as response:
            job_id = (await response.json())["id"]
        while True:
            async with self.session.get(f"{self.base_url}/stream/{job_id}") as response:
                shown = await response.json()
            for item in shown.get("stream", []):
                note_native_chunk(timing, item["output"], stream)
            if shown["status"] in FINAL:
                break
        timing.done = now()
        if shown["status"] != "COMPLETED" and timing.error is None:
            timing.error = f"{shown['status']}: {shown.get('error')}"
        return timing

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class OpenAIHTTPRunner(Runner):
    """An OpenAI-compatible HTTP route (`tpworker dev`'s /openai/v1), read as raw SSE lines with
    aiohttp (as DevNativeRunner, for the least client CPU)."""

    def __init__(self, workload: Workload, base_url: str, model: str) -> None:
        super().__init__(workload)
        self.url, self.model = f"{base_url}/v1/completions", model
        self.session: aiohttp.ClientSession | None = None

    async def request(self, prompt: str, stream: bool) -> Timing:
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0)
            )
        body = openai_body(self.model, prompt, self.sampling, stream)
        timing = Timing(sent=now(), done=0.0)
        async with self.session.post(self.url, json=body) as response:
            if not stream or response.status != 200:
                last = json.loads(await response.read())
            else:
                last, pending, decoder = "", "", codecs.getincrementaldecoder("utf-8")()
                async for data in response.content.iter_any():  # each read as it arrives: one arrival
                    pending += decoder.decode(data)
                    complete, _, pending = pending.rpartition("\n")  # whole lines only
                    if has_text(complete):
                        timing.note_arrival()
                    last = (last + complete + "\n")[-TAIL:]
                last += pending
        timing.done = now()
        note_openai_end(timing, last)
        return timing

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class OpenAIClientRunner(Runner):
    """`vllm serve` through the official openai client: what a worker that proxies to vLLM's
    server (instead of running the engine in process) pays for the extra hop."""

    def __init__(self, workload: Workload, base_url: str, model: str) -> None:
        super().__init__(workload)
        import openai

        self.model = model
        self.client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)

    async def request(self, prompt: str, stream: bool) -> Timing:
        sampling = dict(self.sampling)
        extra = {"ignore_eos": sampling.pop("ignore_eos")}
        timing = Timing(sent=now(), done=0.0)
        if not stream:
            response = await self.client.completions.create(
                model=self.model, prompt=prompt, extra_body=extra, **sampling
            )
            usage = response.usage
        else:
            usage = None
            chunks = await self.client.completions.create(
                model=self.model,
                prompt=prompt,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
                **sampling,
            )
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].text:
                    timing.note_arrival()
                usage = chunk.usage or usage
        timing.done = now()
        if usage is None:
            timing.error = "no usage in the response"
        else:
            timing.tokens, timing.prompt_tokens = usage.completion_tokens, usage.prompt_tokens
        return timing

    async def close(self) -> None:
        await self.client.close()


# ------------------------------------------------------------------------- reading outputs


def note_native_chunk(timing: Timing, chunk: object, stream: bool) -> None:
    """A native output chunk: its tokens, usage, or error."""
    if not isinstance(chunk, dict) or "error" in chunk:
        timing.error = str(chunk.get("error") if isinstance(chunk, dict) else chunk)[:300]
        return
    if stream and any(choice["tokens"] for choice in chunk["choices"]):
        timing.note_arrival()
    timing.tokens, timing.prompt_tokens = chunk["usage"]["output"], chunk["usage"]["input"]


def openai_body(model: str, prompt: str, sampling: dict[str, Any], stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, **sampling, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def has_text(sse: str) -> bool:
    """Whether SSE text holds a completion chunk with text, parsing only until one does."""
    for line in sse.split("\n"):
        if line.startswith("data: {") and '"text":"' in line.replace(" ", ""):
            choices = json.loads(line[6:]).get("choices") or []
            if any(choice.get("text") for choice in choices):
                return True
    return False


def note_openai_end(timing: Timing, last: object) -> None:
    """Usage (and errors) from the last output of an OpenAI request: the response object, or
    SSE text whose usage event comes last."""
    usage = None
    if isinstance(last, dict):
        if "error" in last:
            timing.error = str(last["error"])[:300]
            return
        usage = last.get("usage")
    elif isinstance(last, str):
        for line in reversed(last.split("\n")):
            if line.startswith("data: {"):
                try:
                    event = json.loads(line[6:])
                except ValueError:  # the cut-off head of the kept tail
                    continue
                if "error" in event:
                    timing.error = str(event["error"])[:300]
                    return
                if event.get("usage"):
                    usage = event["usage"]
                    break
    if not usage:
        timing.error = timing.error or "no usage in the response"
        return
    timing.tokens, timing.prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]


async def one_round(runner: Runner, prompts: list[str], stream: bool) -> list[Timing]:
    """All prompts sent at once; a request that raises counts as an error, not a crash."""

    async def guarded(prompt: str) -> Timing:
        sent = now()
        try:
            return await runner.request(prompt, stream)
        except Exception as e:  # a refused or dropped request is a result to report
            return Timing(sent=sent, done=now(), error=f"{type(e).__name__}: {e}"[:300])

    return list(await asyncio.gather(*(guarded(p) for p in prompts)))
