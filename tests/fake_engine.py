"""A test double of serving.engine.Engine, for the fast tier: the same interface the worker, native jobs
and the watchdog use, with deterministic tokens and no vLLM engine behind it (the real-engine tests prove
the same paths end to end). Prompts are one token per character; choice i's k-th generated token is
" w<k>" (" c<i>w<k>" for i > 0), so every chunk's text and count can be predicted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm.sampling_params import RequestOutputKind


@dataclass
class FakeChoice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: None = None


@dataclass
class FakeOutput:
    outputs: list[FakeChoice]
    finished: bool


def token_text(choice: int, k: int) -> str:
    return f" w{k}" if choice == 0 else f" c{choice}w{k}"


class FakeEngine:
    max_model_len = 2048
    llm = None  # no OpenAI serving layer: OpenAI jobs need the real engine
    prepared = None  # nothing prepared beside a start (serving/engine.py)
    vllm_config = None  # no structured-output check (serving/structured_check.py needs the real engine)
    generates = True

    def __init__(self, token_delay: float = 0.0):
        self.token_delay = token_delay  # seconds per engine step
        self.fail_after: int | None = None  # raise `failure` after this many steps
        self.failure: BaseException = RuntimeError("the fake engine failed")
        self.dead = False
        self.requests: dict[str, str] = {}  # request id -> running | finished | aborted
        self.steps = 0
        self.processes_lost: list[str] = []
        self.killed = False

    async def render_chat(self, messages: list[dict], chat_template: str | None, template_kwargs: dict) -> dict:
        text = "".join(str(m.get("content", "")) for m in messages)
        return await self.render_text(text)

    async def render_text(self, prompt: str) -> dict:
        if "\x07" in prompt:  # what a tokenizer refusing its input looks like to the worker
            raise ValueError("the tokenizer refused a control character")
        return {"prompt_token_ids": [ord(c) for c in prompt]}

    async def generate(self, engine_input: dict, params, request_id: str, lora=None) -> AsyncIterator[FakeOutput]:
        self.requests[request_id] = "running"
        delta = params.output_kind == RequestOutputKind.DELTA
        choices = [FakeChoice(i) for i in range(params.n)]
        try:
            for k in range(params.max_tokens):
                await asyncio.sleep(self.token_delay)
                self.steps += 1
                if self.fail_after is not None and self.steps > self.fail_after:
                    raise self.failure
                last = k == params.max_tokens - 1
                step = []
                for choice in choices:
                    piece = FakeChoice(choice.index, token_text(choice.index, k), [1000 + k])
                    piece.finish_reason = "length" if last else None
                    choice.text += piece.text
                    choice.token_ids += piece.token_ids
                    choice.finish_reason = piece.finish_reason
                    step.append(piece)
                if delta:
                    yield FakeOutput(step, last)
            if not delta:
                yield FakeOutput(choices, True)
            self.requests[request_id] = "finished"
        finally:
            if self.requests[request_id] == "running":
                self.requests[request_id] = "aborted"  # closed or cancelled mid-generation

    def unfinished_requests(self) -> int:
        return list(self.requests.values()).count("running")

    def lost_processes(self) -> list[str]:
        return list(self.processes_lost)

    @property
    def has_stepped(self) -> bool:
        return self.steps > 0

    def seconds_without_progress(self) -> float:
        return 0.0

    def kill_processes(self) -> None:
        self.killed = True

    def shutdown(self) -> None:
        self.dead = True
