"""One phase of `tpworker bench` as a child process: started with its spec, followed through its events
file, stopped with its whole process group (the engine and any server it started)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class PhaseProcess:
    """One phase child: started, followed through its events file, stopped with its whole group."""

    def __init__(self, spec: dict[str, Any], folder: Path, env: dict[str, str]) -> None:
        stem = f"tp{spec['tp']}-{spec['phase']}"
        (folder / f"{stem}.json").write_text(json.dumps(spec, indent=1))
        self.events_path = folder / f"{stem}.events.jsonl"
        self.events_path.write_text("")
        self.log_path = folder / f"{stem}.log"
        spawned_at = time.time()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tpworker.bench.phase",
                str(folder / f"{stem}.json"),
                str(self.events_path),
                "--spawned-at",
                repr(spawned_at),
            ],
            env=env,
            stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._read = 0

    def new_events(self) -> list[dict[str, Any]]:
        text = self.events_path.read_text()
        complete = text[self._read :].rsplit("\n", 1)[0] if "\n" in text[self._read :] else ""
        self._read += len(complete) + (1 if complete else 0)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def stop(self) -> None:
        """The phase, its engine and any server it started (all in its process group)."""
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
