"""Where the worker's model comes from at start, in this order:

1. the model baked into the image: the manifest at MODEL_MANIFEST (served offline);
2. a local folder named by MODEL_NAME;
3. the RunPod network volume's hub cache, BASE_PATH/huggingface-cache/hub: RunPod's cached models
   and earlier downloads, in the hub's cache layout (RunPod may lowercase the names; served offline);
4. a download from the hub into that cache (or the container's cache when no volume is mounted),
   unless HF_HUB_OFFLINE is set; else a clear error naming every place looked at.
A model (or TOKENIZER_NAME) still to come from the hub is first checked there (hub_check.py): a missing
model, a wrong revision or a gated model the token cannot open is refused in seconds, before config.json
is read from the hub or anything is downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tpworker.config.settings import Settings
from tpworker.errors import StartRefused
from tpworker.models import hub_check, manifest, snapshot

log = logging.getLogger(__name__)


class ModelNotFound(StartRefused):
    """No source has the model; the message lists where the worker looked."""


@dataclass(frozen=True)
class Located:
    path_or_id: str  # a local folder, or a hub id still to download (download=True)
    served_name: str
    why: str
    tokenizer: str | None = None  # a tokenizer folder baked beside the model
    offline: bool = False  # nothing left to fetch from the hub: vLLM runs with HF_HUB_OFFLINE=1
    download: bool = False


def hub_cache(settings: Settings) -> Path:
    return Path(settings.worker.base_path) / "huggingface-cache" / "hub"


def baked(settings: Settings) -> manifest.Manifest | None:
    file = Path(settings.worker.model_manifest)
    return manifest.read(file) if file.is_file() else None


def find_cached(
    cache: Path,
    repo_id: str,
    revision: str | None,
    problems: Callable[[Path], list[str]] = snapshot.folder_problems,
) -> Path | None:
    """The snapshot folder of `repo_id` in a hub cache, matching its name in any case (RunPod's
    cache lowercases them): the commit or ref `revision`, else main, else the newest complete one
    (complete: `problems(folder)` finds nothing missing; a model's files by default)."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        scanned = scan_cache_dir(cache)
    except CacheNotFound:
        return None
    except OSError as e:  # a volume this user may not read (the image runs as uid 10001), or an I/O error
        log.warning(
            "Cannot read the network volume's hub cache %s (%s); the worker runs as uid %d: make the cache "
            "readable to it to serve models from there. Looking elsewhere.",
            cache,
            e.strerror or e,
            os.getuid(),
        )
        return None
    for warning in scanned.warnings:  # e.g. a snapshot whose files point at missing blobs
        log.warning("In the hub cache %s: %s", cache, warning)
    repos = scanned.repos
    wanted = repo_id.lower()
    for repo in sorted(repos, key=lambda r: r.repo_id != repo_id):  # the exact spelling first
        if repo.repo_type != "model" or repo.repo_id.lower() != wanted:
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        if revision:
            revisions = [r for r in revisions if revision in r.refs or r.commit_hash.startswith(revision)]
        else:
            revisions.sort(key=lambda r: "main" not in r.refs)  # stable: main first, then newest
        for rev in revisions:
            if found := problems(rev.snapshot_path):  # an incomplete copy
                log.warning("Skipping the cached copy %s: %s", rev.snapshot_path, "; ".join(found))
                continue
            return rev.snapshot_path
    return None


def locate(settings: Settings) -> Located | None:
    """The model to serve, or None when MODEL_NAME is unset and nothing is baked (the caller then
    decides: the embedded default model on CPU, an error on GPU). What is still to come from the hub
    (the model, a tokenizer) is checked there first. Raises ModelNotFound, hub_check.HubRefused."""
    located = _find(settings)
    if located is None or settings.hub_offline:
        return located
    worker = settings.worker
    if located.download:
        check = hub_check.check(
            located.path_or_id,  # MODEL_NAME, still to download
            worker.revision,
            endpoint=settings.hub_endpoint,
            variable=settings.source_of("model"),
            revision_variable=settings.source_of("revision"),
        )
        log.info("%s is on the hub at commit %s%s.", worker.model, check.commit[:12], " (gated)" * check.gated)
    tokenizer = worker.tokenizer
    if tokenizer and located.tokenizer in (None, tokenizer) and not Path(tokenizer).is_dir():
        hub_check.check(
            tokenizer,
            worker.tokenizer_revision,
            endpoint=settings.hub_endpoint,
            variable=settings.source_of("tokenizer"),
            revision_variable=settings.source_of("tokenizer_revision"),
            probe="tokenizer_config.json",
        )
    return located


def _find(settings: Settings) -> Located | None:
    worker = settings.worker
    model, revision = worker.model, worker.revision
    image = baked(settings)
    if image is not None:
        if image.serves(model, revision):
            tokenizer: str | None
            if worker.tokenizer and worker.tokenizer not in (image.tokenizer, str(image.tokenizer_path)):
                tokenizer, offline = worker.tokenizer, Path(worker.tokenizer).is_dir()
            else:
                tokenizer, offline = (str(image.tokenizer_path) if image.tokenizer_path else None), True
            return Located(
                str(image.path),
                image.served_name,
                f"{image.model} at commit {image.commit[:12]} is baked into the image "
                f"({settings.source_of('model_manifest')}={worker.model_manifest})",
                tokenizer=tokenizer,
                offline=offline,
            )
        if not model:  # only the revision differs: serving the default model instead would surprise
            raise ModelNotFound(
                f"{settings.source_of('revision')}={revision!r}, but the image holds {image.model} at "
                f"{image.revision or 'main'} (commit {image.commit[:12]}). Unset it, or set MODEL_NAME too."
            )
        log.info("The image holds %s; %s=%s asks for another model.", image.model, settings.source_of("model"), model)
    if not model:
        return None
    if Path(model).is_dir():
        return Located(model, model, f"{settings.source_of('model')} is set to a local folder")
    if model.startswith(("/", "./", "../", "~")):
        raise ModelNotFound(f"{settings.source_of('model')}={model!r} is not a folder on this machine.")
    cache = hub_cache(settings)
    found = find_cached(cache, model, revision)
    # A tokenizer elsewhere on the hub would need the hub at start anyway.
    local_tokenizer = not worker.tokenizer or Path(worker.tokenizer).is_dir()
    if found is not None:
        return Located(
            str(found),
            model,
            f"{model} is in the network volume's cache ({found})",
            offline=local_tokenizer,
        )
    looked = [
        f"no manifest at {worker.model_manifest}" if image is None else f"the image holds {image.model}",
        f"not in {cache}",
    ]
    if settings.hub_offline:
        raise ModelNotFound(
            f"{settings.source_of('model')}={model!r} is not available offline ({'; '.join(looked)}) and "
            f"HF_HUB_OFFLINE is set. Bake it into the image, cache it on the network volume, or unset HF_HUB_OFFLINE."
        )
    return Located(model, model, f"{settings.source_of('model')} is set ({'; '.join(looked)})", download=True)


def download(settings: Settings, located: Located) -> Located:
    """Fetch a model `locate` did not find locally into the network volume's hub cache (so that the
    next worker finds it), or into the container's own cache when no volume is mounted or it is
    read-only. Raises DownloadError."""
    from tpworker.models.download import fetch

    volume, cache = Path(settings.worker.base_path), hub_cache(settings)
    target = None
    if volume.is_dir():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            if not os.access(cache, os.W_OK | os.X_OK):  # e.g. RunPod's cache, made by root
                raise PermissionError(f"{cache} is not writable by this user")
            target = cache
        except OSError as e:
            log.warning("Cannot write to the network volume (%s); downloading into the container instead.", e)
    fetched = fetch(located.path_or_id, settings.worker.revision, cache_dir=target, endpoint=settings.hub_endpoint)
    local_tokenizer = not settings.worker.tokenizer or Path(settings.worker.tokenizer).is_dir()
    return Located(
        str(fetched.path),
        located.served_name,
        f"{located.path_or_id} was downloaded from the hub into {fetched.path}",
        offline=local_tokenizer,
    )
