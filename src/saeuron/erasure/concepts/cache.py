"""The statistics cache: every setting that determines a concept's statistics is its key.

The neutral set is computed once for every concept, and asking again for a concept runs no
UNet at all. Entries are ``<concept>-<key>.{safetensors,json}``, JSON written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Re-exported: the default lives with the settings it is the default of.
from saeuron.erasure.concepts.build_config import default_cache_dir as default_cache_dir
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.models.sites import GUIDANCE_HALF, GUIDANCE_HALF_ALIASES
from saeuron.utils.files import USER_DIR_ENV

logger = logging.getLogger(__name__)

CACHE_ENV = USER_DIR_ENV
CACHE_VERSION = 1
"""Bump when the statistics' definition changes, so old cache entries stop matching."""


def model_id(model: str) -> str:
    """The model's name for cache keys: local folders by absolute path, others as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def stats_cache_key(**settings: Any) -> str:
    """SHA-256 of every setting that determines a :class:`ConceptStats` (JSON, sorted keys)."""
    if GUIDANCE_HALF in settings:
        # Hashed under the name it had when the caches on disk were written: renaming a
        # setting changes no statistics, so it must not throw them away.
        settings = {**settings}
        settings[GUIDANCE_HALF_ALIASES[0]] = settings.pop(GUIDANCE_HALF)
    payload = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "concept"


class StatsCache:
    """Folder of ``ConceptStats`` entries named ``<concept>-<key>``; JSON written last."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str, concept: str) -> Path:
        return self.folder / f"{_slug(concept)}-{key[:24]}"

    def get(self, key: str, concept: str) -> ConceptStats | None:
        base = self.path(key, concept)
        if not base.with_suffix(".json").is_file():
            return None
        try:
            stats = ConceptStats.load(base)
            if stats.meta.get("cache_key") != key:
                raise ValueError("cache key mismatch")
            if not (torch.isfinite(stats.mean).all() and torch.isfinite(stats.active_frac).all()):
                raise ValueError("non-finite values")
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            logger.warning("ignoring unreadable cache entry %s (%s); recomputing", base, err)
            return None
        logger.info("concept %r: statistics from cache %s", concept, base)
        return stats

    def put(self, key: str, stats: ConceptStats) -> Path:
        stats.meta["cache_key"] = key
        return stats.save(self.path(key, stats.concept))

    def get_or_compute(
        self, key: str, concept: str, compute: Callable[[], ConceptStats]
    ) -> ConceptStats:
        stats = self.get(key, concept)
        if stats is None:
            stats = compute()
            self.put(key, stats)
        return stats
