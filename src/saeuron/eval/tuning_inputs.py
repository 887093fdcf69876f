"""What ``saeuron tune`` works with: the model, prompt set, judge, SAEs, statistics and site
sets of a :class:`~saeuron.eval.tune_config.TuneConfig`, each resolved once (a bundled model
supplies its own in ``tune.json``); statistics the prompt set needs and the folder lacks are
collected."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saeuron.erasure.concepts.stats import collect_stats
from saeuron.eval.judges import Judge, make_judge
from saeuron.eval.prompt_sets import PromptSet
from saeuron.eval.tune_config import DEFAULT_TARGETS, SITE_JOIN, TuneConfig
from saeuron.models.layout import read_layout
from saeuron.models.pipelines import load_pipeline
from saeuron.models.resolve import ResolvedModel
from saeuron.sae import Sae
from saeuron.sae.formats import hookpoints_in
from saeuron.utils.config import ConfigError
from saeuron.utils.errors import UserError
from saeuron.utils.hub import missing_pieces
from saeuron.utils.io import read_json_or_empty

logger = logging.getLogger(__name__)

TUNE_FILE = "tune.json"
"""A bundle's tuning defaults: prompt set, judge, SAEs, statistics, site sets, targets."""


# -- what the tuner works with -------------------------------------------------------------


@dataclass
class TuneInputs:
    """Everything a study needs, resolved once: the model, SAEs, statistics, prompts, judge."""

    model: str
    pipe: Any
    prompt_set: PromptSet
    judge: Judge
    saes: Path
    stats: Path
    site_sets: list[str]
    targets: dict[str, float]
    steps: int
    guidance: float


def bundle_tuning(model: ResolvedModel) -> tuple[Path | None, dict[str, Any]]:
    """A bundled model's folder and tuning defaults (none for any other model)."""
    bundle = model.bundle
    if bundle is None:
        return None, {}
    return bundle.folder, read_json_or_empty(bundle.folder / TUNE_FILE)


def resolve_inputs(cfg: TuneConfig, pipe: Any = None, judge: Judge | None = None) -> TuneInputs:
    """The study's inputs from ``cfg`` and the bundle's tuning defaults; refused up front
    when a piece is missing or the prompts hold test-only seeds, phrasings or names.

    Without statistics (no ``--stats``, no bundle's), they are collected here from the prompt
    set, for every concept of the erased one's kind at every site, into a folder beside the
    recipe (kept: a resumed study reads them again)."""
    folder, defaults = bundle_tuning(cfg.resolved_model)

    def pick(value: str | None, key: str) -> str | None:
        if value is not None:
            return value
        if folder is not None and defaults.get(key):
            return str(folder / defaults[key]) if key != "judge" else str(defaults[key])
        return None

    missing = [name for name, value in (
        ("prompt_set", pick(cfg.prompt_set, "prompt_set")), ("judge", pick(cfg.judge, "judge")),
        ("saes", pick(cfg.saes, "saes")),
    ) if value is None]  # fmt: skip
    if missing:
        raise ConfigError(
            missing[0], f"{cfg.model!r} has no tuning defaults for {', '.join(missing)}; "
            "name " + " and ".join(f"--{m.replace('_', '-')}" for m in missing)
        )  # fmt: skip
    prompt_set = PromptSet.load(str(pick(cfg.prompt_set, "prompt_set")))
    prompt_set.check_tunable([cfg.concept])
    kind = prompt_set.kind_of(cfg.concept)
    saes = Path(str(pick(cfg.saes, "saes")))
    given_stats = pick(cfg.stats, "stats")
    judge = _missing_pieces_named(cfg, saes, given_stats, pipe, judge, pick, folder)
    out = Path(cfg.out)
    stats = Path(given_stats) if given_stats else out.parent / f".{out.stem}.stats"
    site_sets = cfg.site_sets or defaults.get("site_sets", {}).get(kind) or (
        [h.name for h in sorted(stats.iterdir())
         if (stats / h.name / f"{cfg.concept}.json").is_file() and (saes / h.name).is_dir()]
        if given_stats else hookpoints_in(saes)
    )  # fmt: skip
    if not site_sets:
        raise ConfigError("site_sets", f"no site has both an SAE in {saes} and statistics "
                                       f"of {cfg.concept!r} in {stats}")  # fmt: skip
    hookpoints = sorted({h for s in site_sets for h in s.split(SITE_JOIN)})
    for hookpoint in hookpoints:
        if not (saes / hookpoint).is_dir():
            raise ConfigError("site_sets", f"no SAE at {saes / hookpoint}")
    absent = [(h, n) for h in hookpoints for n in prompt_set.kinds[kind]
              if not (stats / h / f"{n}.json").is_file()]  # fmt: skip
    if absent and given_stats:
        h, n = absent[0]
        raise ConfigError(
            "stats", f"no statistics of {n!r} at {stats / h}; the contrast needs every concept "
            "of the kind (leave --stats out to have them collected)"
        )  # fmt: skip
    targets = {**DEFAULT_TARGETS, **defaults.get("targets", {}).get(kind, {}), **cfg.targets}
    steps = cfg.num_inference_steps or int(defaults.get("num_inference_steps", 0)) or 20
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else float(
        defaults.get("guidance_scale", 7.5)
    )  # fmt: skip
    if pipe is None:
        pipe = load_pipeline(cfg.resolved_model, device=cfg.device)
    if absent:
        collect_missing_stats(pipe, saes, stats, prompt_set, absent, steps, guidance)
    return TuneInputs(cfg.model, pipe, prompt_set, judge, saes, stats, list(site_sets),
                      targets, steps, guidance)  # fmt: skip


def _missing_pieces_named(
    cfg: TuneConfig, saes: Path, given_stats: str | None, pipe: Any, judge: Judge | None,
    pick: Callable[[str | None, str], str | None], folder: Path | None,
) -> Judge:  # fmt: skip
    """The judge, once every piece the study needs is known to be there: the SAEs, the given
    statistics, the model (offline: in the cache) and the judge's own files. What is missing
    is named in one error, so that it is all fixed at once, before anything samples."""
    errors: list[UserError] = []
    if not saes.is_dir():
        errors.append(ConfigError("saes", f"no folder {saes}"))
    if given_stats is not None and not Path(given_stats).is_dir():
        errors.append(ConfigError("stats", f"no folder {given_stats}"))
    if pipe is None:
        try:
            read_layout(cfg.resolved_model)
        except UserError as err:
            errors.append(err)
    if judge is None:
        spec = str(pick(cfg.judge, "judge"))
        options = {"folder": folder} if spec == "minicanvas" else {}
        try:
            judge = make_judge(spec, **{**options, **cfg.judge_options})
        except UserError as err:
            errors.append(err)
    if errors:
        raise missing_pieces(errors)
    assert judge is not None
    return judge


def collect_missing_stats(
    pipe: Any, saes: Path, stats: Path, prompt_set: PromptSet,
    absent: Sequence[tuple[str, str]], steps: int, guidance: float,
) -> None:  # fmt: skip
    """Each (hookpoint, concept)'s statistics from the prompt set's prompts of the concept
    (every template, every member of the other kinds), written where tuning reads them."""
    logger.info("collecting the statistics of %d (site, concept) pairs at %s", len(absent), stats)
    loaded: dict[str, Sae] = {}
    for hookpoint, concept in tqdm(absent, desc="statistics", unit="concept"):
        if hookpoint not in loaded:
            loaded[hookpoint] = Sae.from_pretrained(saes, hookpoint=hookpoint)
        sae = loaded[hookpoint]
        target, _ = prompt_set.rows(concept)
        prompts = list(dict.fromkeys(r.prompt for r in target))
        collected = collect_stats(
            pipe, sae, prompts, concept=concept, hookpoint=hookpoint, num_inference_steps=steps,
            guidance_scale=guidance, activation_site=sae.meta.get("activation_site", "output"),
            progress=False,
        )  # fmt: skip
        collected.save(stats / hookpoint / concept)


# -- scoring ----------------------------------------------------------------------------
