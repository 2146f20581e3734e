"""What one job may ask for (MAX_N, MAX_OUTPUT_TOKENS, MAX_PROMPT_TOKENS, MAX_REQUEST_BYTES), and every
check of it, for both job forms: native jobs call them while parsing and once the prompt is tokenized;
OpenAI jobs while parsing and, for the prompt, once vLLM's serving layer has rendered it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tpworker.config.variables import WorkerSettings
from tpworker.serving.job_errors import JobError


@dataclass(frozen=True)
class Limits:
    max_n: int
    max_output_tokens: int | None  # None: the model's context is the only bound
    max_prompt_tokens: int | None
    max_request_bytes: int

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Limits:
        return cls(settings.max_n, settings.max_output_tokens, settings.max_prompt_tokens, settings.max_request_bytes)

    def check_request_bytes(self, job_input: Any) -> None:
        try:
            size = len(json.dumps(job_input, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            return  # not plain JSON: the field checks say what is wrong
        if size > self.max_request_bytes:
            raise JobError(
                f"input is {size:,} bytes, above this worker's limit of {self.max_request_bytes:,} "
                "(MAX_REQUEST_BYTES).",
                param="input",
            )

    def check_n(self, n: Any, field: str) -> None:
        if isinstance(n, int) and n > self.max_n:
            raise JobError(f"{field}: {n} is above this worker's limit of {self.max_n} (MAX_N).", param=field)

    def check_output_tokens(self, value: Any, field: str) -> None:
        """An output length the job asked for explicitly (a default one is capped instead)."""
        cap = self.max_output_tokens
        if cap is not None and isinstance(value, int) and value > cap:
            raise JobError(f"{field}: {value} is above this worker's limit of {cap} (MAX_OUTPUT_TOKENS).", param=field)

    def prompt_problem(self, prompt_tokens: int) -> str | None:
        """Why a prompt of this many tokens is refused, or None."""
        limit = self.max_prompt_tokens
        if limit is not None and prompt_tokens > limit:
            return f"the prompt is {prompt_tokens} tokens, above this worker's limit of {limit} (MAX_PROMPT_TOKENS)."
        return None

    def check_prompt_tokens(self, prompt_tokens: int, field: str) -> None:
        if problem := self.prompt_problem(prompt_tokens):
            raise JobError(f"{field}: {problem}", param=field)

    def default_output_tokens(self, default: int) -> int:
        """The output length of a job that did not ask for one: the worker's default, within the limit."""
        return default if self.max_output_tokens is None else min(default, self.max_output_tokens)
