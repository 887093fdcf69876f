"""What a metric or detector needs beyond the technique, and the error when it can't be had."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import try_to_load_from_cache


@dataclass(frozen=True)
class Requirement:
    what: str
    available: bool
    detail: str = ""


class MetricError(RuntimeError):
    """A metric cannot produce an honest value (a detector failed, a model is missing)."""


def hub_cached(repo: str, filename: str, repo_type: str = "model") -> str | None:
    """The local path of ``filename`` of a hub repository already in the cache, else None.

    Never touches the network; a malformed id counts as not cached (loading reports it)."""
    try:
        found = try_to_load_from_cache(repo, filename, repo_type=repo_type)
    except Exception:
        return None
    return found if isinstance(found, str) else None
