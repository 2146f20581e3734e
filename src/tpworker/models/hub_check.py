"""Ask the Hugging Face hub, before anything downloads or reads config.json from it, whether a model named
by a variable can be served: the repository exists and the token (if any) may see it, the revision is one
of its branches, tags or commits, and a gated model's files are open to the token. Two short requests; each
answer that says no is a refusal naming the variable to change and the fix. A hub that cannot be reached
(connection refused, no answer in time, 5xx) is a refusal a restart may fix (retryable)."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from tpworker.errors import StartRefused, in_one_line

# Seconds per request: the hub answers these in well under one; past this a restart is the better wait.
TIMEOUT_S = 5.0
HUB = "https://huggingface.co"


class HubRefused(StartRefused):
    """The hub says the model cannot be served as named, or cannot be asked (retryable)."""


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    commit: str  # the commit the revision is at
    gated: bool


def is_transient(error: BaseException) -> bool:
    """A failure that a later try may well not meet: no connection, no answer in time, the hub's 5xx or 429."""
    import httpx2  # huggingface_hub's HTTP client: its transport errors
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):  # HF_HUB_OFFLINE: a restart sets it again
        return False
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else 0
        return status >= 500 or status == 429
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return False
    # huggingface_hub says LocalEntryNotFound when the hub could not be reached and nothing is cached.
    return isinstance(error, (httpx2.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError))


def _why_unreachable(error: BaseException, timeout: float) -> str:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return f"it answered {error.response.status_code} {error.response.reason_phrase}".rstrip()
    if isinstance(error, httpx2.TimeoutException):
        return f"no answer within {timeout:g} s"
    return f"it cannot be reached ({in_one_line(error)[:200] or type(error).__name__})"


def _token_given() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())  # HF_TOKEN, or a token saved by `hf auth login`


def check(
    repo_id: str,
    revision: str | None,
    *,
    endpoint: str | None = None,
    variable: str = "MODEL_NAME",
    revision_variable: str = "MODEL_REVISION",
    probe: str = "config.json",
    timeout: float | None = None,
) -> HubModel:
    """Whether `repo_id` at `revision` can be fetched with the token huggingface_hub will send. `variable`
    and `revision_variable` are the variables that named them (for the messages); `probe` is the file
    whose metadata tests a gated model's access; `timeout` is per request (default TIMEOUT_S). Raises HubRefused."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HFValidationError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    timeout = timeout or TIMEOUT_S
    site = (endpoint or HUB).rstrip("/")
    where = f"the Hugging Face hub at {site}" + (" (HF_ENDPOINT)" if endpoint else "")
    named = f"{variable}={repo_id!r}"
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=timeout)
        # A gated model's information is public; its files are not. None: a mirror that does not say.
        if info.gated is not False and (info.siblings is None or probe in {s.rfilename for s in info.siblings}):
            url = hf_hub_url(repo_id, probe, revision=info.sha, endpoint=endpoint)
            try:
                get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
            except RemoteEntryNotFoundError:  # let in, and no such file: said by what reads it next
                pass
        return HubModel(repo_id, info.sha or "", bool(info.gated))
    except GatedRepoError as e:
        terms = f"{site}/{repo_id}"
        if _token_given():
            raise HubRefused(
                f"{named} is a gated model and the token in HF_TOKEN has no access to it. Accept its terms at "
                f"{terms} with that token's account (some models also wait for the authors' approval), or set "
                f"HF_TOKEN to a token of an account that has access."
            ) from e
        raise HubRefused(
            f"{named} is a gated model and HF_TOKEN is not set. Accept its terms at {terms} with your Hugging Face "
            f"account, then set HF_TOKEN to a token of that account (read access is enough)."
        ) from e
    except RevisionNotFoundError as e:
        raise HubRefused(
            f"{revision_variable}={revision!r} is not a branch, tag or commit of {repo_id} on {where}. Set one that "
            f"is (the repository's Files tab lists them), or unset {revision_variable} for its default branch."
        ) from e
    except DisabledRepoError as e:
        raise HubRefused(f"{named}: the repository is disabled on {where}; it cannot be downloaded.") from e
    except RepositoryNotFoundError as e:
        token = (
            "the token in HF_TOKEN cannot see it (use a token of an account that can)"
            if _token_given()
            else "HF_TOKEN is not set (set it to a token that can read the model)"
        )
        raise HubRefused(
            f"{named} is not a model on {where}, or it is private and {token}. Check the name: org/model, as in "
            f"{site}/<org>/<model>."
        ) from e
    except HFValidationError as e:
        raise HubRefused(
            f"{named} is neither a folder on this machine nor a Hugging Face model id (org/model): "
            f"{in_one_line(e).split('. ')[0][:200]}."
        ) from e
    except Exception as e:
        if is_transient(e):
            raise HubRefused(
                f"Cannot check {named} on {where}: {_why_unreachable(e, timeout)}. A restart will try again.",
                retryable=True,
            ) from e
        if getattr(getattr(e, "response", None), "status_code", None) == 401 and _token_given():
            raise HubRefused(
                f"HF_TOKEN is not a token {where} knows (it answered 401: invalid credentials). Set HF_TOKEN to a "
                f"valid token ({HUB}/settings/tokens), or unset it for a public model."
            ) from e
        said = in_one_line(e)[:300]
        raise HubRefused(f"Cannot check {named} on {where}: {type(e).__name__}: {said}") from e
