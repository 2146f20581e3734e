"""Fetch the files a model needs from the Hugging Face hub (`tpworker download`, the image build,
and the worker's own download into a network volume).

huggingface_hub does the transfer: a pinned commit, a progress bar, files already present are
skipped and an interrupted transfer resumes. This module decides which files (snapshot.py),
checks there is room before the first byte, verifies the weights that arrived, and turns the
hub's errors into sentences that say what to do: retryable when a restart may succeed (the network, the
hub's 5xx), not when it cannot (a missing or gated model, a wrong revision, a full disk).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tpworker.errors import StartRefused, in_one_line
from tpworker.models import hub_check, snapshot

if TYPE_CHECKING:
    from tpworker.models.manifest import Manifest

log = logging.getLogger(__name__)
# Room kept free beyond the files themselves (file system overhead, logs, temp files).
SPARE_BYTES = 256 * 1024**2


class DownloadError(StartRefused):
    """A download that cannot happen or did not complete; the message says what to do."""


@dataclass(frozen=True)
class Fetched:
    repo_id: str
    commit: str
    path: Path
    files: list[str]
    weight_bytes: int


def gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_room(target: Path, needed: int) -> None:
    free = shutil.disk_usage(_existing_ancestor(target)).free
    if needed + SPARE_BYTES > free:
        raise DownloadError(
            f"Not enough disk space: the model needs {gib(needed)} more at {target}, and {gib(free)} is free. "
            f"Free some space, or download to a larger disk (a larger container disk or network volume on RunPod)."
        )


def explain(error: BaseException, repo_id: str, revision: str | None, target: Path) -> DownloadError:
    """The hub's or the file system's error, said so that the user knows what to change; retryable when
    a restart may succeed (hub_check.is_transient: the network, the hub's 5xx or 429)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        if get_token():
            return DownloadError(
                f"{repo_id} is a gated model and the Hugging Face token given has no access to it. Accept its "
                f"terms at https://huggingface.co/{repo_id} with the token's account, or use another token."
            )
        return DownloadError(
            f"{repo_id} is a gated model and no Hugging Face token was given. Accept its terms at "
            f"https://huggingface.co/{repo_id}, then set HF_TOKEN (image build: --secret id=HF_TOKEN,env=HF_TOKEN)."
        )
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(
            f"{repo_id} has no revision {revision!r}. Give a branch, tag or commit of the repository "
            f"(MODEL_REVISION / --revision), or leave it unset for the default branch."
        )
    if isinstance(error, RepositoryNotFoundError):
        return DownloadError(
            f"No model {repo_id!r} on the Hugging Face hub, or it is private and "
            f"{'the token given cannot read it' if get_token() else 'no HF_TOKEN was given'}. Check the name."
        )
    if isinstance(error, OfflineModeIsEnabled):
        return DownloadError(f"Cannot download {repo_id}: HF_HUB_OFFLINE is set. Unset it, or bake the model in.")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DownloadError(
            f"The disk filled up while downloading {repo_id} into {target} (a full disk). Free some space, or "
            f"download to a larger disk (a larger container disk or network volume on RunPod)."
        )
    said = in_one_line(error)
    if hub_check.is_transient(error):
        return DownloadError(
            f"Cannot download {repo_id}: the Hugging Face hub could not be reached or failed "
            f"({type(error).__name__}: {said[:300]}). Run it again to resume; a worker restarts and does.",
            retryable=True,
        )
    return DownloadError(f"Cannot download {repo_id}: {type(error).__name__}: {said[:500]}")


def _present(target: Path | None, name: str, size: int | None) -> bool:
    path = target / name if target else None
    return bool(path and path.is_file() and (size is None or path.stat().st_size == size))


def fetch(
    repo_id: str,
    revision: str | None = None,
    *,
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
    tokenizer_only: bool = False,
    endpoint: str | None = None,
) -> Fetched:
    """Download what the worker needs of `repo_id` at `revision` (default branch when None) into
    `local_dir` (a plain folder) or `cache_dir` (the hub's cache layout). Raises DownloadError."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    target = local_dir or cache_dir or Path.home()
    try:
        api = HfApi(endpoint=endpoint)
        commit = api.model_info(repo_id, revision=revision, timeout=hub_check.TIMEOUT_S).sha
        if commit is None:  # the hub names the commit of every revision it answers for
            raise DownloadError(f"The hub named no commit for {repo_id} at {revision or 'the default branch'}.")
        listing = {
            f.path: f.size
            for f in api.list_repo_tree(repo_id, revision=commit, recursive=False)
            if isinstance(f, RepoFile)
        }
        files = snapshot.side_files(listing, tokenizer_only)
        weights: list[str] = []
        if not tokenizer_only:
            if snapshot.CONFIG not in listing:
                raise DownloadError(f"{repo_id} has no config.json at its top level: is it a transformers model?")
            fmt = snapshot.weight_format(listing)
            if fmt is None:
                raise DownloadError(
                    f"{repo_id} at {commit[:12]} has no weights the worker can load: no *.safetensors and no "
                    f"pytorch_model*.bin at its top level (GGUF or other formats are not served)."
                )
            index = None
            if fmt.index in listing:
                index_file = hf_hub_download(
                    repo_id, fmt.index, revision=commit, local_dir=local_dir, cache_dir=cache_dir, endpoint=endpoint
                )
                index = json.loads(Path(index_file).read_text())
                files.append(fmt.index)
            weights = snapshot.weight_files(listing, fmt, index)
            if missing := [w for w in weights if w not in listing]:
                raise DownloadError(f"{repo_id}'s {fmt.index} names files the repository lacks: {', '.join(missing)}")
        files = sorted(set(files + weights))
        needed = sum(listing[n] or 0 for n in files if not _present(local_dir, n, listing[n]))
        check_room(target, needed)
        log.info(
            "Downloading %s at %s (commit %s): %d files, %s to fetch, into %s",
            repo_id,
            revision or "the default branch",
            commit[:12],
            len(files),
            gib(needed),
            target,
        )
        path = Path(
            snapshot_download(
                repo_id,
                revision=commit,
                allow_patterns=files,
                local_dir=local_dir,
                cache_dir=cache_dir,
                endpoint=endpoint,
            )
        )
    except DownloadError:
        raise
    except Exception as e:  # the hub's errors, connection errors, OSError from the disk
        raise explain(e, repo_id, revision, target) from e
    if tokenizer_only:
        problems = (
            [] if any((path / n).is_file() for n in snapshot.TOKENIZER_FILES) else [f"no tokenizer files in {path}"]
        )
    else:
        problems = snapshot.folder_problems(path, {n: listing[n] for n in weights})
    if problems:
        raise DownloadError(
            f"The download of {repo_id} is incomplete: {'; '.join(problems)}. Run it again to resume.", retryable=True
        )
    return Fetched(repo_id, commit, path, files, sum(listing[n] or 0 for n in weights))


def folder_name(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def download_model(
    repo_id: str,
    dest: Path,
    *,
    revision: str | None = None,
    tokenizer: str | None = None,
    tokenizer_revision: str | None = None,
    served_name: str | None = None,
    manifest_file: Path | None = None,
    endpoint: str | None = None,
) -> Manifest:
    """`tpworker download`: the model (and a separate tokenizer) into folders under `dest`, the
    tensor-parallel sizes it allows, and the manifest the worker reads at start. Returns the
    Manifest. Raises DownloadError."""
    from tpworker.models import manifest
    from tpworker.planning.modelinfo import ModelFacts
    from tpworker.planning.parallel import valid_tp_sizes

    model = fetch(repo_id, revision, local_dir=dest / folder_name(repo_id), endpoint=endpoint)
    tok = None
    if tokenizer and tokenizer != repo_id:
        tok = fetch(
            tokenizer,
            tokenizer_revision,
            local_dir=dest / f"tokenizer--{folder_name(tokenizer)}",
            tokenizer_only=True,
            endpoint=endpoint,
        )
    try:
        facts = ModelFacts.from_config(json.loads((model.path / snapshot.CONFIG).read_text()))
    except (KeyError, ValueError) as e:
        raise DownloadError(f"{repo_id}'s config.json is not one the planner reads ({e!r}).") from e
    result = manifest.Manifest(
        model=repo_id,
        revision=revision,
        commit=model.commit,
        path=model.path,
        served_name=served_name or repo_id,
        tokenizer=tok.repo_id if tok else None,
        tokenizer_revision=tokenizer_revision if tok else None,
        tokenizer_path=tok.path if tok else None,
        valid_tp_sizes=valid_tp_sizes(facts),
        weight_bytes=model.weight_bytes,
    )
    result.write(manifest_file or dest / manifest.FILE_NAME)
    return result
