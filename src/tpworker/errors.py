"""The base of every error that stops the worker at start with a message the user can act on
(bad variable, impossible parallel plan, model not found, engine refused the configuration).
Kept free of imports so the start-up path can catch these before vLLM is loaded."""


class StartRefused(Exception):
    """The worker cannot start as configured; str(error) says what to change, one line per problem.

    `retryable`: a restart of the same configuration may succeed (a network error while downloading, an
    engine that died while starting). On RunPod such a worker exits so that RunPod starts it again; one a
    restart cannot fix stays up and answers every job with this message (ON_REFUSED_START), because an
    exited worker is restarted into the same refusal, and every start is billed."""

    def __init__(self, message: str = "", *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def in_one_line(error: object) -> str:
    """An error's words on one line (vLLM's and pydantic's messages span several): for logs and job errors."""
    return " ".join(str(error).split())
