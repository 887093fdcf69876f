"""SAEmnesia with its published files: the SAE plus per-class statistics and parameters.

SAEmnesia's inference picks, at every denoising step t, the latents whose score
``mu_c[t] / sum(mu_c[t]) - mu_notc[t] / sum(mu_notc[t])`` lies strictly above the class's
percentile (99.999: one latent per step), scales them by ``gamma * mu_c[t, f]`` where they
exceed the mean over classes of the per-class means, and reads everything from its
``cls_latents_dict`` (class -> token-mean codes ``[prompts, steps, latents]``) and
``class_params`` (class -> percentile, multiplier). Both are pickles; ``saeuron convert``
turns them into our safetensors/JSON once, with the user's trust, and this module reads those.
"""

from __future__ import annotations

import logging
from pathlib import Path

from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.features import ConceptFeatures
from saeuron.utils.config import ConfigError
from saeuron.utils.text import read_json

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.999
"""SAEmnesia's: one latent per step with 20,480 latents."""


def stats_names(folder: str | Path) -> dict[str, str]:
    """Class name -> file base name of the converted statistics in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("stats", f"folder {str(folder)!r} does not exist")
    names: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        if not path.with_suffix(".safetensors").is_file():
            continue
        try:
            info = read_json(path, "stats")
            names[str(info["concept"])] = path.stem
        except (KeyError, TypeError) as err:
            raise ConfigError(
                "stats", f"{path} is not a converted statistics file ({err})"
            ) from None
    if len(names) < 2:
        raise ConfigError(
            "stats",
            f"{folder} holds {len(names)} classes; the scores contrast one class with the others "
            "(convert the whole cls_latents_dict with: saeuron convert stats)",
        )
    return names


def read_params(path: str | Path, concept: str) -> dict[str, float]:
    """The class's ``percentile`` and ``multiplier`` from converted ``class_params``."""
    path = Path(path)
    data = read_json(path, "params")
    if not isinstance(data, dict) or concept not in data or not isinstance(data[concept], dict):
        known = ", ".join(sorted(data)) if isinstance(data, dict) else "nothing"
        raise ConfigError("params", f"{path} has no entry for {concept!r}; it holds {known}")
    entry = data[concept]
    out = {}
    for key in ("percentile", "multiplier"):
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError("params", f"{path}: {concept}.{key} is {value!r}, not a number")
            out[key] = float(value)
    return out


def stats_hookpoint(folder: str | Path, base: str) -> str | None:
    """The hookpoint recorded with converted statistics (when convert was told it)."""
    info = read_json(Path(folder) / f"{base}.json", "stats")
    return (info.get("meta") or {}).get("hookpoint")


def published_features(
    stats: str,
    erase_concept: str,
    hookpoint: str,
    params_path: str | None = None,
    percentile: float | None = None,
) -> ConceptFeatures:
    """The concept's features picked per step as SAEmnesia's inference picks them."""
    names = stats_names(stats)
    concept = {n.lower(): n for n in names}[erase_concept]
    params = read_params(params_path, concept) if params_path else {}
    percentile = percentile or params.get("percentile", DEFAULT_PERCENTILE)
    all_stats = {n: ConceptStats.load(Path(stats) / base) for n, base in names.items()}
    target = all_stats.pop(concept)
    features = select_contrastive(target, list(all_stats.values()), percentile=percentile)
    features.concept = erase_concept
    features.meta["hookpoint"] = hookpoint
    features.meta["source"] = f"SAEmnesia statistics {stats}"
    if "multiplier" in params:
        features.meta["multiplier"] = params["multiplier"]
    logger.info(
        "saemnesia: %r, latents per step %s at p=%s",
        concept,
        features.meta.get("selected_per_step"),
        percentile,
    )
    return features
