"""`tpworker cluster` run as a user runs it, for the cluster tests: each node is a subprocess
with its own Ray temp folder, so several Ray nodes share this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from conftest import ENGINE_ENV, ROOT, free_port


class Node:
    """One `tpworker cluster head|join ...` process; its output goes to a log file."""

    def __init__(self, args: list[str], folder: Path, name: str, **env: str):
        self.log_path = folder / f"{name}.log"
        # Ray's sockets live under its temp folder: a short path keeps them under the 107-byte limit.
        self.temp_dir = folder / name
        command = [
            sys.executable,
            "-m",
            "tpworker",
            "cluster",
            *args,
            "--",
            f"--temp-dir={self.temp_dir}",
            "--num-cpus=1",
            "--include-dashboard=false",
        ]
        if args[0] == "join":
            command.remove("--include-dashboard=false")  # a head-only option
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **ENGINE_ENV, **env},
            stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the output (exit {self.process.poll()}):\n{self.log()[-4000:]}")
            time.sleep(0.5)

    def wait(self, timeout: float = 180) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Stop this command (it stops its Ray node), then anything Ray left under its temp folder."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        kill_processes_using(self.temp_dir)

    def ray_processes(self) -> list[psutil.Process]:
        return processes_using(self.temp_dir)


def processes_using(folder: Path) -> list[psutil.Process]:
    """Ray's processes for a node: their command lines name its temp folder."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_processes_using(folder: Path) -> None:
    for process in processes_using(folder):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def short_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="tpr", dir="/tmp"))


__all__ = ["Node", "free_port", "kill_processes_using", "processes_using", "short_folder"]
