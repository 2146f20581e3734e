"""buildah, as tests/test_image.py drives it: build the project's Dockerfile, run commands inside what was
built (chroot isolation, no daemon: `podman run` cannot start containers on machines like this one), and
read an image's config, history and layers. Every command's output goes to a log file under `logs`."""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT


class CommandFailed(AssertionError):
    pass


@dataclass
class Buildah:
    logs: Path

    def __call__(self, *args: str, log: str | None = None, timeout: float = 1800, check: bool = True, prefix=()):
        """Run `buildah ARGS` (after `prefix`, e.g. unshare); the output is returned and kept in logs/LOG."""
        done = subprocess.run(
            [*prefix, "buildah", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        output = done.stdout + done.stderr
        if log:
            (self.logs / log).write_text(output)
        if check and done.returncode != 0:
            raise CommandFailed(f"buildah {' '.join(args[:3])} ... exited {done.returncode}:\n{output[-4000:]}")
        return done

    def build(
        self,
        tag: str,
        base: str,
        log: str,
        build_args: dict[str, str],
        mounts: dict[Path, str],
        secret: tuple[str, Path] | None = None,
        cache: bool = True,
    ):
        """The project's Dockerfile, unchanged, with its FROM replaced by `base`. cache: reuse the layers of
        earlier builds whose steps and inputs are the same (else every step runs)."""
        args = ["bud", "--isolation", "chroot", "--layers", "--from", base, "-t", tag, "-f", str(ROOT / "Dockerfile")]
        if not cache:
            args.append("--no-cache")
        args += [f"--build-arg={name}={value}" for name, value in build_args.items()]
        args += [f"--volume={source}:{target}:ro" for source, target in mounts.items()]
        if secret:
            args += [f"--secret=id={secret[0]},src={secret[1]}"]
        done = self(*args, str(ROOT), log=log)
        return done.stdout + done.stderr

    def exists(self, image: str) -> bool:
        return self("inspect", "--type", "image", image, check=False).returncode == 0

    def inspect(self, image: str) -> dict:
        return json.loads(self("inspect", "--type", "image", image).stdout)

    @contextlib.contextmanager
    def container(self, image: str):
        name = self("from", "--pull=never", image).stdout.strip().splitlines()[-1]
        try:
            yield name
        finally:
            self("rm", name, check=False)

    def run(
        self,
        container: str,
        command: list[str],
        log: str,
        env: dict[str, str] | None = None,
        volumes: dict[Path, str] | None = None,
        offline: bool = False,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        """`command` inside the container as the image's USER. offline: in a network namespace of its own with
        only a loopback device (vLLM's ranks talk over it), so nothing outside the machine can be reached."""
        prefix = ("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "offline") if offline else ()
        args = run_arguments(container, command, env, volumes)
        return self(*args, log=log, timeout=timeout, check=False, prefix=prefix)

    def start(self, container: str, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        """`command` inside the container in the background, in a process group of its own (to stop it whole)."""
        return subprocess.Popen(
            ["buildah", *run_arguments(container, command, env)],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def export(self, image: str, folder: Path) -> list[Path]:
        """The image as an OCI layout; returns the layer files, base first."""
        self("push", "--quiet", "--disable-compression", image, f"oci:{folder}")
        index = json.loads((folder / "index.json").read_text())
        manifest = _blob(folder, index["manifests"][0]["digest"])
        return [_blob_path(folder, layer["digest"]) for layer in json.loads(manifest)["layers"]]


def run_arguments(container: str, command: list[str], env=None, volumes=None) -> list[str]:
    args = ["run", "--isolation", "chroot"]
    args += [f"--env={name}={value}" for name, value in (env or {}).items()]
    args += [f"--volume={source}:{target}" for source, target in (volumes or {}).items()]
    return [*args, container, "--", *command]


def _blob_path(folder: Path, digest: str) -> Path:
    algorithm, value = digest.split(":")
    return folder / "blobs" / algorithm / value


def _blob(folder: Path, digest: str) -> str:
    return _blob_path(folder, digest).read_text()


def scan_layer(layer: Path, needles: list[bytes], chunk: int = 1 << 24) -> tuple[int, set[bytes]]:
    """(the layer's size as a tar, the needles that occur anywhere in it: file contents, names, headers).
    Read through gzip when the blob is compressed (buildah may keep layers gzipped whatever it is asked)."""
    with open(layer, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    overlap = max(len(n) for n in needles) - 1
    found: set[bytes] = set()
    size, tail = 0, b""
    with (gzip.open if gzipped else open)(layer, "rb") as f:
        while block := f.read(chunk):
            size += len(block)
            window = tail + block
            found |= {needle for needle in needles if needle in window}
            tail = window[-overlap:] if overlap else b""
    return size, found
