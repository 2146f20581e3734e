"""The worker whose start was refused for good: it stays on RunPod's job loop and answers every job, of
either form, with the cause and the fix, the words the start logged. On RunPod an exited worker is
restarted into the same refusal, and every start is billed; one that answers says why at once.
Imports neither vLLM nor the engine: a refusal may come before either could load."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from tpworker.errors import StartRefused, in_one_line
from tpworker.serving.job_errors import service_unavailable
from tpworker.serving.lifecycle import Lifecycle, State

# A refused worker answers at once; it takes jobs as fast as RunPod hands them out.
REFUSED_CONCURRENCY = 16


def refusal_message(error: StartRefused) -> str:
    return "The worker cannot start: " + in_one_line(error)


class RefusedWorker:
    def __init__(self, lifecycle: Lifecycle, error: StartRefused) -> None:
        self.lifecycle = lifecycle
        self.error = service_unavailable(refusal_message(error))
        lifecycle.post(State.REFUSED, refusal_message(error), self.error)

    def concurrency(self, current: int = 0) -> int:
        return REFUSED_CONCURRENCY

    async def handle(self, job: Any) -> AsyncGenerator[dict[str, Any], None]:
        yield (self.lifecycle.refusal() or self.error).to_output()
