"""How streamed output is cut into yields, for both job forms: RunPod posts every yield over HTTP
before the handler resumes, so each costs latency; the first is small (a fast first token), the
next ones grow by a factor up to a cap (DEFAULT_BATCH_SIZE, MIN_BATCH_SIZE, BATCH_SIZE_GROWTH_FACTOR,
or the job's own max_batch_size, min_batch_size, batch_size_growth_factor)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tpworker.config.variables import WorkerSettings


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int
    min_size: int
    growth_factor: float

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> BatchPolicy:
        return cls(
            settings.default_batch_size,
            min(settings.min_batch_size, settings.default_batch_size),
            settings.batch_size_growth_factor,
        )

    def for_job(self, max_size: int | None, min_size: int | None, growth_factor: float | None) -> BatchPolicy:
        """This policy with a job's own overrides (a minimum above the maximum is lowered to it)."""
        policy = BatchPolicy(max_size or self.max_size, min_size or self.min_size, growth_factor or self.growth_factor)
        if policy.min_size > policy.max_size:
            policy = BatchPolicy(policy.max_size, policy.max_size, policy.growth_factor)
        return policy

    def sizes(self) -> Iterator[float]:
        """The size of each yield in turn (tokens for native jobs, SSE events for OpenAI ones)."""
        size = self.min_size
        while True:
            yield size
            size = min(size * self.growth_factor, self.max_size)
