"""Every structured-output specification a job sends is tried first in a process of its own
(vllm_bridge/grammar_probe.py) under STRUCTURED_OUTPUT_TIMEOUT: one that takes longer is refused, and the
process killed, so that no specification reaches the engine whose cost would stall every other job (vLLM
compiles and walks them inside its engine step). One that accepts no token, or that vLLM refuses, is refused
with vLLM's words. What passed is remembered (and what was refused), so a specification is tried once.

One probe process, one specification at a time: a costly one holds the others back by at most the limit.
Probe processes are forked from multiprocessing's fork server, which imports vLLM's structured-output
modules once (seconds of a core): the worker starts it before the engine (start_fork_server), so that those
seconds overlap the engine's start rather than the first jobs, and a probe process, forked once the worker has
warmed up, only loads the tokenizer (a second). From the first kill on, a spare is kept started, so that the
next specification does not wait for a new process; a job that does wait for one (the first) does not have
that wait counted.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from tpworker.serving.job_errors import JobError
from tpworker.vllm_bridge import grammar_probe

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext

    from tpworker.vllm_bridge.types import StructuredOutputsParams, VllmConfig

log = logging.getLogger(__name__)

Key: TypeAlias = tuple[Any, ...]  # a specification's grammar_probe.cache_key
Value = TypeVar("Value")

# Tokens of a specification walked before the engine gets it (fewer when the job asks for fewer).
WALK_TOKENS = 256
REMEMBERED = 4096  # specifications remembered, passed or refused (the oldest are forgotten)
START_TIMEOUT_S = 300  # the probe process must be up by then (it imports vLLM)


@dataclass(frozen=True)
class Refusal:
    """Why a specification is refused, without the field's path (the caller knows it)."""

    field: str  # regex, json, grammar, choice, json_object, structural_tag
    message: str


def start_fork_server() -> None:
    """Start the fork server the probe processes come from, now: its imports run beside what the caller does
    next (the engine's start). Call before any thread changes the environment it inherits."""
    import multiprocessing.forkserver

    _context()
    multiprocessing.forkserver.ensure_running()


def _context() -> ForkServerContext:
    """Processes forked from a fork server (started on first use, single-threaded, with the probe's modules
    imported once: grammar_probe.PRELOAD), not from the worker itself, whose threads a fork would copy."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(grammar_probe.PRELOAD)
    return context


class ProbeProcess:
    """The probe process and its connection; asked one specification at a time."""

    def __init__(self, vllm_config: VllmConfig) -> None:
        context = _context()
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=grammar_probe.serve, args=(child, vllm_config), name="tpworker-grammar-probe", daemon=True
        )
        self.process.start()
        child.close()

    async def receive(self) -> Any:
        """The next message from the process (unpickled); EOFError when it has died."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        descriptor = self.connection.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(descriptor, wake)
        try:
            await ready
        finally:
            loop.remove_reader(descriptor)
        return self.connection.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(1)  # SIGKILL: gone at once
        self.connection.close()


class StructuredOutputCheck:
    def __init__(self, vllm_config: VllmConfig, timeout: float) -> None:
        self.vllm_config, self.timeout = vllm_config, timeout
        self._probe: asyncio.Task[ProbeProcess] | None = None  # ProbeProcess, once started and ready
        self._spare: asyncio.Task[ProbeProcess] | None = None  # the next one, kept from the first kill on
        self._one_at_a_time = asyncio.Lock()
        self._passed: OrderedDict[Key, float] = OrderedDict()  # key -> tokens walked (inf: walked to its end)
        self._refused: OrderedDict[Key, Refusal] = OrderedDict()
        self._checking: dict[Key, tuple[int, asyncio.Task[None]]] = {}  # key -> (tokens, its check in progress)
        self._processes: set[ProbeProcess] = set()  # every one started and not killed

    def close(self) -> None:
        """Kill the probe processes (any thread: the worker is shutting down)."""
        for probe in list(self._processes):
            probe.kill()
        self._processes.clear()

    def start(self) -> None:
        """Start the probe process now, in the background (call inside the event loop that serves jobs)."""
        self._started_probe()

    def _started_probe(self) -> asyncio.Task[ProbeProcess]:
        if self._probe is None:
            self._probe, self._spare = self._spare or self._new_probe(), None
        return self._probe

    def _new_probe(self) -> asyncio.Task[ProbeProcess]:
        return asyncio.get_running_loop().create_task(self._start_probe())

    async def _start_probe(self) -> ProbeProcess:
        began = time.monotonic()
        probe = ProbeProcess(self.vllm_config)
        self._processes.add(probe)
        message = await asyncio.wait_for(probe.receive(), START_TIMEOUT_S)
        assert message == ("ready",), message
        log.info("Structured-output probe process ready in %.1f s.", time.monotonic() - began)
        return probe

    async def problem(self, structured_outputs: StructuredOutputsParams, max_tokens: int | None) -> Refusal | None:
        """Why this specification must not reach the engine, or None when it may."""
        key = grammar_probe.cache_key(structured_outputs)
        steps = min(max_tokens or WALK_TOKENS, WALK_TOKENS)
        while True:
            if key in self._refused:
                return self._refused[key]
            if self._passed.get(key, -1) >= steps:
                return None
            checking = self._checking.get(key)
            if checking is None or checking[0] < steps:
                task = asyncio.get_running_loop().create_task(self._check(key, structured_outputs, steps))
                checking = self._checking[key] = (steps, task)
            # shielded: a job cancelled meanwhile leaves the check to finish (and the probe process in step)
            await asyncio.shield(checking[1])

    async def _check(self, key: Key, structured_outputs: StructuredOutputsParams, steps: int) -> None:
        try:
            async with self._one_at_a_time:
                refusal, walked = await self._probe_once(key, structured_outputs, steps)
            if refusal:
                _remember(self._refused, key, refusal)
            else:
                _remember(self._passed, key, walked)
        finally:
            if self._checking.get(key, (0, None))[1] is asyncio.current_task():
                del self._checking[key]

    async def _probe_once(
        self, key: Key, structured_outputs: StructuredOutputsParams, steps: int
    ) -> tuple[Refusal | None, float]:
        started = self._started_probe()
        try:
            probe = await started
        except Exception as e:
            self._probe = None  # try again with the next job
            raise JobError(
                f"The structured-output check could not start ({type(e).__name__}: {e}); retry the request.",
                type="ServiceUnavailableError",
                code=503,
            ) from e
        field = grammar_probe.constraint_field(structured_outputs)
        probe.connection.send((key, structured_outputs, steps))
        try:
            _, answer = await asyncio.wait_for(probe.receive(), self.timeout)
        except (TimeoutError, EOFError, OSError) as e:
            died = not isinstance(e, TimeoutError)
            code = probe.process.exitcode
            probe.kill()
            self._processes.discard(probe)
            self._probe = None
            self.start()  # the spare, if one is up
            self._spare = self._new_probe()  # and the next spare, in the background
            if died:
                ended = f"checking this {field} ended its process (exit code {code}): it would end vLLM's engine too"
                return Refusal(field, ended), 0
            log.warning("Structured output: a %s took more than %g s to check; refused.", field, self.timeout)
            return Refusal(field, too_costly(field, steps, self.timeout)), 0
        if isinstance(answer, tuple):  # vLLM refused it, in its own words
            return Refusal(field, answer[0]), 0
        if answer.problem:
            return Refusal(field, f"this {field} {answer.problem}. Give one that matches some text."), 0
        log.info(
            "Structured output: a %s checked in %.3f s (%d tokens walked%s).",
            field,
            answer.seconds,
            answer.steps,
            ", to its end" if answer.finished else "",
        )
        return None, float("inf") if answer.finished else answer.steps


def too_costly(field: str, steps: int, timeout: float) -> str:
    return (
        f"this {field} did not compile and allow its first {steps} tokens within STRUCTURED_OUTPUT_TIMEOUT="
        f"{timeout:g} s: its cost would stall every job on this worker. Simplify it (nested quantifiers such "
        "as (a*)* make a regex's cost explode), or raise STRUCTURED_OUTPUT_TIMEOUT."
    )


def _remember(store: OrderedDict[Key, Value], key: Key, value: Value) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > REMEMBERED:
        store.popitem(last=False)
