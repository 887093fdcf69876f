"""The Hugging Face hub: telling repo ids from paths, fetching, publishing, failing fast.

Users with a network load models, SAEs and data by hub id; the library keeps that code and
makes its failures one line: an uncached id while offline names the model and the fix
instead of retrying for half a minute and printing three chained tracebacks. Every call to
the hub goes through the functions of this module (tests replace them with local folders).
"""

from __future__ import annotations

import functools
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import (
    constants,
    create_repo,
    snapshot_download,
    try_to_load_from_cache,
    upload_folder,
)

from saeuron.utils.atomic import disk_full_names
from saeuron.utils.errors import ConfigError, DiskFullError, ModelUnavailableError, UserError
from saeuron.utils.paths import check_tree_inside

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# huggingface_hub retries failed connections for a long time by default; a user without a
# network waits for nothing. These bound it to seconds.
_TIMEOUT_ENV = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10"}


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(HUB_ID.fullmatch(name)) and not Path(name).exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def bounded_timeouts() -> None:
    """Short hub timeouts unless the user set their own."""
    for key, value in _TIMEOUT_ENV.items():
        os.environ.setdefault(key, value)


def unavailable(what: str, repo_id: str, err: BaseException | None = None) -> ModelUnavailableError:
    """The one-line error for a hub resource that cannot be had here."""
    reason = "the hub is unreachable or the id is wrong"
    if offline():
        reason = "HF_HUB_OFFLINE is set and it is not in the local cache"
    elif err is not None and type(err).__name__ in ("RepositoryNotFoundError", "GatedRepoError"):
        reason = "no such repository, or it needs a login (huggingface-cli login)"
    return ModelUnavailableError(
        f"{what} {repo_id!r} cannot be loaded: {reason}. {_FIX}",
        piece=f"{what} {repo_id!r} ({reason})",
    )


_FIX = (
    "Run once with a network so it is cached, pass a local folder, or use the bundled model "
    "(--model minicanvas)"
)


def missing_pieces(errors: Sequence[UserError]) -> UserError:
    """One error naming every missing piece of a job (model, SAE, features, ...), so that
    the user fixes them all at once instead of learning of one per run. A single error is
    returned as it is."""
    if len(errors) == 1:
        return errors[0]
    pieces = [getattr(err, "piece", None) or str(err) for err in errors]
    return ModelUnavailableError(
        f"{len(pieces)} pieces are missing: " + "; ".join(pieces) + ". Run once with a "
        "network so the hub ones are cached, pass local folders and files instead, or use the "
        "bundled model (--model minicanvas)",
        piece="; ".join(pieces),
    )


@functools.cache
def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub answers at all: one request, no retries (huggingface_hub retries a
    refused connection with back-off for about 25 s before it gives up)."""
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error page
    except (OSError, ValueError):
        return False


def usable_offline(repo_id: str, what: str, **kwargs: Any) -> bool:
    """Before a download: True when the hub cannot be reached but the cache holds the
    repository (load it from there); the one-line error when neither can give it."""
    if offline() or hub_reachable():
        return False
    if local_snapshot(repo_id, what, **kwargs) is None:
        raise unavailable(what, repo_id)
    return True


def snapshot(repo_id: str, what: str = "repository", **kwargs: Any) -> Path:
    """``huggingface_hub.snapshot_download`` with short timeouts and a one-line failure."""
    bounded_timeouts()
    if usable_offline(repo_id, what, **kwargs):
        kwargs["local_files_only"] = True
    cache = kwargs.get("cache_dir") or kwargs.get("local_dir") or constants.HF_HUB_CACHE
    try:
        # A download cut by a full disk leaves only ``.incomplete`` files, which the next
        # download resumes once there is room.
        with disk_full_names(f"{what} {repo_id!r} (downloading into {cache})"):
            folder = Path(snapshot_download(repo_id, **kwargs))
    except DiskFullError:
        raise
    except Exception as err:  # noqa: BLE001 - every hub failure becomes the same user error
        if _is_hub_failure(err):
            raise unavailable(what, repo_id, err) from err
        raise
    # Someone else's tree: a link out of it would have us read their choice of local file.
    return check_tree_inside(folder, f"{what} {repo_id!r}")


def local_snapshot(repo_id: str, what: str = "repository", **kwargs: Any) -> Path | None:
    """The cached snapshot of a hub repository, never touching the network.

    None when it is not cached but may be downloaded later; while offline (``HF_HUB_OFFLINE``)
    that is already the one-line error, so a command refuses before any work.
    """
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception as err:  # noqa: BLE001 - not cached, whatever the library calls it
        if offline():
            raise unavailable(what, repo_id, err) from err
        return None
    return check_tree_inside(folder, f"{what} {repo_id!r}")


def _is_hub_failure(err: BaseException) -> bool:
    names = {t.__name__ for t in type(err).__mro__}
    return bool(
        names
        & {
            "HfHubHTTPError",
            "LocalEntryNotFoundError",
            "RepositoryNotFoundError",
            "GatedRepoError",
            "RevisionNotFoundError",
            "EntryNotFoundError",
            "OfflineModeIsEnabled",
            "ConnectionError",
            "Timeout",
            "OSError",
        }
    )


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """Where ``filename`` of ``repo_id`` lies in the local hub cache, or None; never asks the
    network."""
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an id the cache cannot hold is simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload every file of ``folder`` to the model repo ``repo_id`` (created if needed);
    files already in the repo and not in ``folder`` stay. Returns the commit's URL."""
    if not HUB_ID.fullmatch(repo_id):
        raise ConfigError("repo_id", f"got {repo_id!r}; expected owner/name")
    bounded_timeouts()
    try:
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message or "Upload with saeuron",
            token=token,
            revision=revision,
        )
    except Exception as err:  # noqa: BLE001 - hub failures become one line
        if _is_hub_failure(err):
            raise ModelUnavailableError(
                f"could not push to {repo_id!r}: {type(err).__name__}: {err}. Log in with "
                "`hf auth login` (or pass token=...) and check the network"
            ) from err
        raise
    return str(getattr(info, "commit_url", info))
