"""Compatibility: ``saeuron.concepts`` moved to :mod:`saeuron.erasure.concepts`.

Kept so that code written against earlier releases (``from saeuron.concepts import
ConceptBuildConfig, build_concept``) keeps working; new code imports from ``saeuron`` or
``saeuron.erasure.concepts``.
"""

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept, summarize
from saeuron.erasure.concepts.cache import StatsCache, default_cache_dir
from saeuron.erasure.concepts.prompts import concept_prompts
from saeuron.erasure.concepts.select import (
    contrastive_scores,
    percentile_count,
    select_contrastive,
    select_shortcut,
)
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats

__all__ = [
    "ConceptBuildConfig",
    "ConceptStats",
    "StatsCache",
    "build_concept",
    "collect_stats",
    "concept_prompts",
    "contrastive_scores",
    "default_cache_dir",
    "percentile_count",
    "select_contrastive",
    "select_shortcut",
    "summarize",
]
