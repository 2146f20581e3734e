"""The one error type of a job that cannot run: it becomes the job's one output, OpenAI's error object."""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """A job that cannot run. Becomes the job's one error output; the worker keeps serving."""

    def __init__(self, message: str, param: str | None = None, type: str = "BadRequestError", code: int = 400):
        super().__init__(message)
        self.message, self.param, self.type, self.code = message, param, type, code

    def to_output(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def service_unavailable(message: str) -> JobError:
    """The worker cannot serve now (engine stopped, shutting down): retry elsewhere."""
    return JobError(message, type="ServiceUnavailableError", code=503)
