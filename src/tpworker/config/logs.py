"""Logging, configured once per process by every entry point (handler.py, each `tpworker` command),
with the values of secret variables (HF_TOKEN, RUNPOD_AI_API_KEY, RAY_AUTH_TOKEN, ...) replaced by
*** in every line: a last line of defence should a library put one in a message."""

from __future__ import annotations

import logging

from tpworker.config.settings import secret_values

SERVICE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # a process that runs for long
COMMAND_FORMAT = "%(message)s"  # a command that reports and exits


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


def configure_logging(fmt: str = SERVICE_FORMAT) -> None:
    """INFO and above to stderr in `fmt`, secrets redacted. Once per process: later calls change nothing."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for handler in root.handlers for f in handler.filters):
        return
    logging.basicConfig(level=logging.INFO, format=fmt)
    redact = RedactSecrets(secret_values())
    for handler in root.handlers:
        handler.addFilter(redact)
