"""The manifest `tpworker download` writes beside a downloaded model, and the worker reads at start.

It says which model the folder holds (hub id, the revision asked for and the commit it resolved
to), the name to serve it under, and where its tokenizer is. Paths are stored relative to the
manifest's own folder, so a folder of models can be moved or mounted elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tpworker.errors import StartRefused

FILE_NAME = "tpworker-manifest.json"
FORMAT = 1


class ManifestError(StartRefused):
    """A manifest that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Manifest:
    model: str  # hub id
    revision: str | None  # as asked for (branch, tag or commit); None: the default branch
    commit: str  # what it resolved to
    path: Path  # the model folder (absolute once read)
    served_name: str
    tokenizer: str | None = None  # hub id of a separate tokenizer
    tokenizer_revision: str | None = None
    tokenizer_path: Path | None = None
    valid_tp_sizes: list[int] = field(default_factory=list)
    weight_bytes: int = 0

    def serves(self, model: str | None, revision: str | None) -> bool:
        """Whether this copy is what MODEL_NAME / MODEL_REVISION ask for (unset: anything)."""
        if model and model != self.model and Path(model).resolve() != self.path.resolve():
            return False
        # Downloaded without a revision: the default branch, main on the hub.
        return not revision or revision == (self.revision or "main") or self.commit.startswith(revision)

    def write(self, file: Path) -> None:
        data = asdict(self)
        for key in ("path", "tokenizer_path"):
            if data[key] is not None:
                data[key] = os.path.relpath(data[key], file.parent)
        file.parent.mkdir(parents=True, exist_ok=True)
        scratch = file.with_name(f".{file.name}.tmp")
        scratch.write_text(json.dumps({"format": FORMAT, **data}, indent=2) + "\n")
        scratch.replace(file)  # a reader never sees half a manifest


def read(file: Path) -> Manifest:
    """The manifest at `file`, with absolute paths. Raises ManifestError saying what is wrong."""
    try:
        data = json.loads(file.read_text())
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"unknown format (this worker reads format {FORMAT})")
        manifest = Manifest(**data)
    except (OSError, ValueError, TypeError) as e:
        raise ManifestError(f"The model manifest {file} cannot be read: {e}") from e
    path = (file.parent / manifest.path).resolve()
    tokenizer_path = (file.parent / manifest.tokenizer_path).resolve() if manifest.tokenizer_path else None
    return Manifest(**{**asdict(manifest), "path": path, "tokenizer_path": tokenizer_path})
