"""What a metric or detector needs beyond the technique, and the error when it can't be had."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import try_to_load_from_cache


@dataclass(frozen=True)
class Requirement:
    what: str
    available: bool
    detail: str = ""
    kind: str = "setting"
    """What it takes when missing: ``package`` (an optional extra to install), ``download``
    (fetched from the hub by a run online) or ``setting`` (a file or value the config must
    give; the metric is skipped, naming it, and the run goes on)."""
    needed: bool = True
    """False where the run has a fallback (it says so when it uses it)."""


def unmet(requirements: list[Requirement]) -> list[Requirement]:
    """What this machine lacks for a run: a missing package (an optional extra). ``--check``
    lists them as warnings; a run refuses them, all at once, before sampling. (A download
    the offline cache lacks fails where it loads, naming it.)"""
    return [r for r in requirements if not r.available and r.needed and r.kind == "package"]


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
