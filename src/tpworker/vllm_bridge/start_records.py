"""vLLM's own log records of its start, read as timeline marks.

vLLM applies its logging configuration (VllmConfig.logging_config) in every process it starts: the
engine core and each rank. Given a configuration that is vLLM's default plus one more handler, each
of those processes also appends the records that mark a start phase (START_MESSAGES) to one file, one
JSON object a line, which the worker reads once the engine is ready; and the errors that ended a start
(a record logged with its exception, e.g. "EngineCore failed to start." with vLLM's ValueError), whose
words say why the engine did not start (`StartRecords.failure`). The message texts are vLLM
0.32's (the pinned release); a record that stops matching after an upgrade drops its phase from the
timeline (tests/test_start_timeline.py checks each against a real start).

This module is imported by vLLM's processes by name (the handler's formatter and filter): keep it
light.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm import AsyncEngineArgs
    from vllm.config.logging import LoggingConfig

# vLLM's start messages (after their optional "[prefix] "): the phase each marks.
START_MESSAGES = {
    "engine core up": re.compile(r"Initializing a V1 LLM engine \(v(?P<version>[^)]+)\)"),
    "rank up": re.compile(r"Starting to load model "),
    "checkpoint size": re.compile(r"Checkpoint size: (?P<gib>[\d.]+) GiB"),
    "weights read": re.compile(r"Loading weights took (?P<seconds>[\d.]+) seconds"),
    "model loaded": re.compile(r"Model loading took (?P<gib>[\d.]+) GiB memory and (?P<seconds>[\d.]+) seconds"),
    "compiled graph loaded": re.compile(
        r"Directly load the compiled graph\(s\) .* from the cache, took (?P<seconds>[\d.]+) s"
    ),
    "graph compiled": re.compile(r"Compiling a graph for compile range .* takes (?P<seconds>[\d.]+) s"),
    "compiled": re.compile(r"torch\.compile took (?P<seconds>[\d.]+) s in total"),
    "aot compiled saved": re.compile(r"saved AOT compiled function to "),
    "aot compiled loaded": re.compile(r"Directly load AOT compilation from path "),
    # The CPU runner's warm-up pass, run when the model is compiled (torch.compile with inductor): the compile.
    "cpu warm-up done": re.compile(r"\bWarming up done\.$"),
    "KV cache sized": re.compile(r"KV cache size: (?P<tokens>[\d,]+) tokens"),
    "graphs captured": re.compile(r"Graph capturing finished in (?P<seconds>[\d.]+) secs, took (?P<gib>[\d.]+) GiB"),
    "engine core ready": re.compile(
        r"init engine \(profile, create kv cache, warmup model\) took (?P<seconds>[\d.]+) s"
    ),
}


class StartRecordFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.exc_info and record.exc_info[1] is not None:
            return True
        message = record.getMessage()
        return any(pattern.search(message) for pattern in START_MESSAGES.values())


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        process = getattr(record, "vllm_process_name", None) or record.processName
        entry = {"at": record.created, "pid": record.process, "process": process, "message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = " ".join(_exception_text(record.exc_info[1]).split())
        return json.dumps(entry)


def _exception_text(error: BaseException) -> str:
    """'ValueError: ...': the exception as Python's last traceback line says it."""
    import traceback

    return "".join(traceback.format_exception_only(type(error), error)).strip()


@dataclass(frozen=True)
class StartRecord:
    phase: str  # a key of START_MESSAGES
    at: float
    process: str
    fields: dict[str, str]


class StartRecords:
    """The records file of one engine start, and the logging configuration that fills it."""

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="tpworker-start-", suffix=".jsonl")
        self.path = Path(name)
        self.config_path = self.path.with_suffix(".logging.json")
        os.close(handle)
        self.config_path.write_text(json.dumps(self._logging_config()))

    def _logging_config(self) -> dict[str, Any]:
        from vllm.logger import DEFAULT_LOGGING_CONFIG

        config = deepcopy(DEFAULT_LOGGING_CONFIG)
        config["formatters"]["tpworker_start"] = {"()": f"{__name__}.JsonLineFormatter"}
        config["filters"] = {**config.get("filters", {}), "tpworker_start": {"()": f"{__name__}.StartRecordFilter"}}
        config["handlers"]["tpworker_start"] = {
            "class": "logging.FileHandler",
            "filename": str(self.path),
            "mode": "a",
            "formatter": "tpworker_start",
            "filters": ["tpworker_start"],
            "level": "INFO",
        }
        config["loggers"]["vllm"]["handlers"] = [*config["loggers"]["vllm"]["handlers"], "tpworker_start"]
        return config

    def logging_config(self) -> LoggingConfig:
        """vLLM's LoggingConfig for the engine's arguments (logging_config=)."""
        from vllm.config.logging import LoggingConfig

        return LoggingConfig(pylogging_config_file=str(self.config_path))

    def read(self) -> list[StartRecord]:
        return list(_parse(self.path.read_text().splitlines() if self.path.exists() else []))

    def marks(self, ranks: int) -> list[tuple[str, float, str]]:
        return timeline_marks(self.read(), ranks)

    def failure(self) -> str | None:
        """The exception that ended the start in one of vLLM's processes ('ValueError: ...'), if one was logged."""
        return _first_error(self.path.read_text().splitlines() if self.path.exists() else [])

    def remove(self) -> None:
        for path in (self.path, self.config_path):
            path.unlink(missing_ok=True)


def recordable(engine_args: AsyncEngineArgs) -> str | None:
    """Why the start records cannot be kept for these engine arguments, or None if they can: the user
    configured vLLM's logging themselves (their configuration is left as it is)."""
    import vllm.envs as envs

    if not envs.VLLM_CONFIGURE_LOGGING:
        return "VLLM_CONFIGURE_LOGGING=0"
    if envs.VLLM_LOGGING_CONFIG_PATH:
        return "VLLM_LOGGING_CONFIG_PATH is set"
    if getattr(engine_args, "logging_config", None) or getattr(engine_args, "log_config_file", None):
        return "vLLM's logging is configured in the engine arguments"
    return None


def _entries(lines: list[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a process killed while writing
            continue


def _first_error(lines: list[str]) -> str | None:
    return next((entry["error"] for entry in _entries(lines) if entry.get("error")), None)


def _parse(lines: list[str]) -> Iterator[StartRecord]:
    for entry in _entries(lines):
        for phase, pattern in START_MESSAGES.items():
            if found := pattern.search(entry["message"]):
                yield StartRecord(phase, entry["at"], entry["process"], found.groupdict())
                break


def timeline_marks(records: list[StartRecord], ranks: int) -> list[tuple[str, float, str]]:
    """(phase, time, detail) for the start timeline: one mark per phase, at its last record (the
    slowest rank), with the figures of its records."""
    by_phase: dict[str, list[StartRecord]] = {}
    for record in records:
        by_phase.setdefault(record.phase, []).append(record)
    last = {phase: max(found, key=lambda r: r.at) for phase, found in by_phase.items()}
    marks = []
    if "engine core up" in last:
        marks.append(("engine core up", last["engine core up"].at, f"vLLM {last['engine core up'].fields['version']}"))
    if "rank up" in last:
        marks.append(("ranks up", last["rank up"].at, f"{len(by_phase['rank up'])} rank(s) loading"))
    if loaded := _weights_mark(by_phase, last, ranks):
        marks.append(loaded)
    phases = ("compiled graph loaded", "aot compiled loaded", "compiled", "aot compiled saved", "cpu warm-up done")
    for phase in (*phases, "graphs captured", "KV cache sized", "engine core ready"):
        if phase in last:
            marks.append((_NAMES.get(phase, phase), last[phase].at, _detail(phase, last[phase].fields)))
    return marks


_NAMES = {
    "compiled graph loaded": "compiled graphs loaded from the cache",
    "compiled": "compiled",
    "aot compiled loaded": "compiled model loaded from the cache",
    "aot compiled saved": "compiled model saved to the cache",
    "cpu warm-up done": "compiled (the CPU warm-up pass)",
    "graphs captured": "graphs captured",
    "engine core ready": "engine core ready (profiled, warmed up)",
}


def _detail(phase: str, fields: dict[str, str]) -> str:
    if phase == "KV cache sized":
        return f"{fields['tokens']} tokens"
    if phase == "graphs captured":
        return f"{fields['gib']} GiB"
    return f"vLLM: {fields['seconds']} s" if "seconds" in fields else ""


def _weights_mark(
    by_phase: dict[str, list[StartRecord]], last: dict[str, StartRecord], ranks: int
) -> tuple[str, float, str] | None:
    """Weights loaded, with GiB and GiB/s per rank: each rank's own figures where vLLM logs them
    (GPU: "Model loading took X GiB"), else the checkpoint's size shared by the ranks."""
    if "model loaded" in last:
        done = by_phase["model loaded"]
        gib = max(float(r.fields["gib"]) for r in done)
        seconds = max(float(r.fields["seconds"]) for r in done)
        return "weights loaded", last["model loaded"].at, _per_rank(gib, seconds)
    if "weights read" not in last:
        return None
    seconds = max(float(r.fields["seconds"]) for r in by_phase["weights read"])
    if "checkpoint size" not in last:
        return "weights loaded", last["weights read"].at, f"read in {seconds:.1f} s"
    gib = float(last["checkpoint size"].fields["gib"]) / max(ranks, 1)
    return "weights loaded", last["weights read"].at, _per_rank(gib, seconds)


def _per_rank(gib: float, seconds: float) -> str:
    rate = f"{gib / seconds:.2f} GiB/s" if seconds > 0 else "too fast to time"
    return f"{gib:.2f} GiB per rank in {seconds:.1f} s, {rate}"


class _NoRecords:
    def marks(self, ranks: int) -> list[tuple[str, float, str]]:
        return []

    def failure(self) -> None:
        return None


@contextmanager
def kept(engine_args: AsyncEngineArgs) -> Iterator[StartRecords | _NoRecords]:
    """Have vLLM's processes keep their start records while the engine starts (sets
    engine_args.logging_config), and remove the files after. Yields what gives the timeline marks: none
    when the user configured vLLM's logging (then the timeline has the worker's own marks only)."""
    if reason := recordable(engine_args):
        logging.getLogger(__name__).info("Start-up timeline without vLLM's phases: %s.", reason)
        yield _NoRecords()
        return
    records = StartRecords()
    engine_args.logging_config = records.logging_config()
    try:
        yield records
    finally:
        records.remove()
