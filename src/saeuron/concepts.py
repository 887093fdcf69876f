"""Which SAE latents encode a concept: statistics over prompts, scores, selection.

method.md section 4. A concept's prompts run through the stock pipeline with a hook on the
SAE's hookpoint; every token of every needed step is SAE-encoded (per-token TopK) and
averaged over the image's tokens, then over prompts::

    mu_c[t]    = mean over c's prompts of the token-mean code at step t
    mu_notc[t] = the same over the prompts of every other concept (prompt-weighted)
    s[t]       = mu_c[t] / sum(mu_c[t]) - mu_notc[t] / sum(mu_notc[t])

Per step, the selected latents are those whose score is strictly above the p-th percentile
of ``s`` (numpy's linear interpolation: with 20,480 latents p = 99.999 / 99.995 / 99.99 pick
1 / 2 / 3), or the top ``tau``. Each gets the threshold the erasing hook compares against: the
mean over all concepts (target and every other one) of their per-concept means.

Seed 000's shortcut needs no other concepts: the concept itself is the prompt of
``shortcut_images`` images, the SAE is read at one denoising step only (sampling stops right
after it), and the top ``tau`` latents by mean activation are kept for every step.

Statistics are cached on disk by everything that determines them (model, SAE weights,
hookpoint, prompts, schedule, seed, ...), so the neutral set is computed once for every
concept, and asking again for a concept runs no UNet at all.

Usage::

    cfg = ConceptBuildConfig(concept="cat", model="CompVis/stable-diffusion-v1-4",
                             sae="bcywinski/SAeUron", hookpoint="unet.up_blocks.1.attentions.1")
    features = build_concept(cfg)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from .config import Config, ConfigError, check_choice, check_device, check_range, field
from .features import ConceptFeatures
from .hookpoints import (
    ACTIVATION_SITES,
    CFG_HALVES,
    conditional_rows,
    input_tensor,
    output_tensor,
    resolve_module,
    to_tokens,
    track_denoising,
)
from .io import atomic_write_json, atomic_write_safetensors
from .sae import Sae

logger = logging.getLogger(__name__)

METHODS = ("contrastive", "shortcut")
NEUTRAL = "neutral"
"""Name of the bundled neutral prompt set, usable as ``others``."""
NEUTRAL_PROMPTS_FILE = Path(__file__).parent / "data" / "neutral_prompts.txt"
CACHE_ENV = "SAEURON_CACHE"
CACHE_VERSION = 1
"""Bump when the statistics' definition changes, so old cache entries stop matching."""

CONCEPT_TEMPLATES = (
    "a photo of {c}",
    "an image of {c}",
    "{c}",
    "a picture of {c}",
    "a close-up photo of {c}",
    "a high-quality photo of {c}",
    "a painting of {c}",
    "a drawing of {c}",
    "a detailed illustration of {c}",
    "a sketch of {c}",
    "a rendering of {c}",
    "an artwork showing {c}",
    "a photograph featuring {c}",
    "a bright photo of {c}",
    "a dark photo of {c}",
    "a cropped photo of {c}",
    "a blurry photo of {c}",
    "a photo of {c} outdoors",
    "a photo of {c} indoors",
    "a wide shot of {c}",
    "{c} in the afternoon light",
)


# -- prompt sets ------------------------------------------------------------------------------


def concept_prompts(concept: str, n: int = 20) -> list[str]:
    """``n`` prompts naming ``concept`` from :data:`CONCEPT_TEMPLATES`, cycled when ``n`` is larger.

    Repeated templates still give different images: every prompt gets its own seed.
    """
    if n < 1:
        raise ValueError(f"n: got {n}; must be >= 1")
    return [CONCEPT_TEMPLATES[i % len(CONCEPT_TEMPLATES)].format(c=concept) for i in range(n)]


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError("prompts", f"{path} holds no prompts")
    return prompts


def neutral_prompts() -> list[str]:
    """The bundled neutral everyday prompts (scenes, objects, landscapes)."""
    return read_prompt_file(NEUTRAL_PROMPTS_FILE)


def read_other_concepts(path: str | Path) -> dict[str, list[str]]:
    """Prompt sets of the other concepts: ``NAME`` -> prompts.

    A ``.json`` file maps concept names to prompt lists (each a concept of its own, as the
    paper's other styles/objects); any other file is one prompt a line, one concept.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in data.values()
        ):
            raise ConfigError(
                "others", f"{path} must map concept names to non-empty lists of prompts"
            )
        return {str(k): list(v) for k, v in data.items()}
    return {f"others:{path.stem}": read_prompt_file(path)}


# -- statistics -------------------------------------------------------------------------------


@dataclass
class ConceptStats:
    """Token-mean SAE codes of one concept's prompts, averaged over prompts, per step."""

    concept: str
    mean: Tensor
    """``[steps, n_latents]`` float32: mean over prompts of the token-mean activation."""
    active_frac: Tensor
    """``[steps, n_latents]`` float32: share of tokens on which the latent is active (> 0)."""
    n_prompts: int
    timesteps: Tensor
    """``[steps]`` the scheduler timestep of each row."""
    meta: dict[str, Any] = dc_field(default_factory=dict)
    """Provenance: prompts, model, sae, hookpoint, steps (schedule indices of the rows), ..."""

    def __post_init__(self) -> None:
        self.mean = self.mean.float()
        self.active_frac = self.active_frac.float()
        self.timesteps = self.timesteps.float().reshape(-1)
        if self.mean.ndim != 2 or self.mean.shape != self.active_frac.shape:
            raise ValueError(
                f"concept {self.concept!r}: mean {tuple(self.mean.shape)} and active_frac "
                f"{tuple(self.active_frac.shape)} must both be [steps, n_latents]"
            )
        if self.timesteps.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"concept {self.concept!r}: {self.timesteps.shape[0]} timesteps for "
                f"{self.mean.shape[0]} steps"
            )
        if self.n_prompts < 1:
            raise ValueError(f"concept {self.concept!r}: n_prompts must be >= 1")

    @property
    def num_steps(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_latents(self) -> int:
        return int(self.mean.shape[1])

    @property
    def steps(self) -> list[int]:
        """Schedule index of each row (all steps when the meta does not say)."""
        return list(self.meta.get("steps", range(self.num_steps)))

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json`` (``path`` without suffix); JSON last."""
        base = Path(path).with_suffix("")
        atomic_write_safetensors(
            base.with_suffix(".safetensors"),
            {"mean": self.mean, "active_frac": self.active_frac, "timesteps": self.timesteps},
        )
        atomic_write_json(
            base.with_suffix(".json"),
            {"concept": self.concept, "n_prompts": self.n_prompts, "meta": self.meta},
        )
        return base

    @classmethod
    def load(cls, path: str | Path) -> ConceptStats:
        base = Path(path).with_suffix("")
        info = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        tensors = load_file(base.with_suffix(".safetensors"))
        return cls(
            concept=info["concept"],
            mean=tensors["mean"],
            active_frac=tensors["active_frac"],
            n_prompts=int(info["n_prompts"]),
            timesteps=tensors["timesteps"],
            meta=dict(info.get("meta", {})),
        )


class _StopSampling(Exception):
    """Raised from the step callback by pipelines that do not honour ``_interrupt``."""


def _unet_device(pipe: Any) -> torch.device:
    return next(pipe.unet.parameters()).device


@torch.no_grad()
def collect_stats(
    pipe: Any,
    sae: Sae,
    prompts: Sequence[str],
    *,
    concept: str,
    hookpoint: str,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 0,
    cfg_half: str = "cond",
    steps: Sequence[int] | None = None,
    batch_size: int = 4,
    activation_site: str = "output",
    progress: bool = True,
) -> ConceptStats:
    """Sample ``prompts`` with the stock pipeline and average the SAE codes at ``hookpoint``.

    Only running sums are kept (memory ``O(steps x n_latents)``), and each batch stops
    sampling right after the last step in ``steps`` (``None``: every step); no VAE decode.
    Prompt ``i`` gets a CPU generator seeded ``seed + i``, so its statistics do not depend on
    the batch it lands in, nor on the device.
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        raise ConfigError("prompts", f"concept {concept!r} has no prompts")
    check_range("num_inference_steps", num_inference_steps, ge=1)
    check_range("batch_size", batch_size, ge=1)
    check_choice("cfg_half", cfg_half, CFG_HALVES)
    check_choice("activation_site", activation_site, ACTIVATION_SITES)
    needed = sorted(set(range(num_inference_steps) if steps is None else (int(s) for s in steps)))
    if not needed or needed[0] < 0 or needed[-1] >= num_inference_steps:
        raise ConfigError(
            "steps", f"got {steps!r}; expected step indices in [0, {num_inference_steps - 1}]"
        )
    row_of = {s: r for r, s in enumerate(needed)}
    module = resolve_module(pipe, hookpoint)
    device = _unet_device(pipe)
    sae.to(device)

    n_rows, n_latents = len(needed), sae.num_latents
    # float64 on the host: sums over thousands of prompts lose no precision.
    sums = torch.zeros(n_rows, n_latents, dtype=torch.float64)
    active = torch.zeros(n_rows, n_latents, dtype=torch.float64)
    images = torch.zeros(n_rows, dtype=torch.long)
    tokens = torch.zeros(n_rows, dtype=torch.long)
    timesteps = torch.full((n_rows,), float("nan"), dtype=torch.float64)
    seen_in_batch: set[int] = set()
    schedule_warned = False

    with track_denoising(pipe) as state:

        def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            nonlocal schedule_warned
            row = row_of.get(state.step)
            if row is None:
                return
            if state.num_steps != num_inference_steps and not schedule_warned:
                logger.warning(
                    "the scheduler runs %d timesteps for %d inference steps; step indices "
                    "refer to scheduler.timesteps",
                    state.num_steps,
                    num_inference_steps,
                )
                schedule_warned = True
            out = output_tensor(output)
            site = out - input_tensor(args, kwargs) if activation_site == "update" else out
            part = to_tokens(site[conditional_rows(out.shape[0], state.cfg, cfg_half)])
            b, t, _ = part.shape
            top = sae.encode(part)
            idx = top.top_indices.flatten()
            acts = top.top_acts.flatten().float()
            # All images have t tokens, so summing acts / t sums the per-image token means.
            row_sum = acts.new_zeros(n_latents).index_add_(0, idx, acts / t)
            row_active = acts.new_zeros(n_latents).index_add_(0, idx, (acts > 0).float())
            sums[row] += row_sum.double().cpu()
            active[row] += row_active.double().cpu()
            images[row] += b
            tokens[row] += b * t
            timesteps[row] = state.timestep
            seen_in_batch.add(state.step)

        honours_interrupt = isinstance(getattr(type(pipe), "interrupt", None), property)

        def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if len(seen_in_batch) == n_rows:
                if not honours_interrupt:
                    raise _StopSampling
                p._interrupt = True
            return {}

        stop_early = needed[-1] < num_inference_steps - 1
        removable = module.register_forward_hook(hook, with_kwargs=True)
        bar = tqdm(total=len(prompts), desc=f"stats {concept}", unit="prompt", disable=not progress)
        try:
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start : start + batch_size]
                generators = [
                    torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(batch))
                ]
                seen_in_batch.clear()
                try:
                    pipe(
                        prompt=batch,
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale,
                        generator=generators,
                        output_type="latent",
                        callback_on_step_end=on_step_end if stop_early else None,
                    )
                except _StopSampling:
                    pass
                bar.update(len(batch))
        finally:
            bar.close()
            removable.remove()
            if hasattr(pipe, "_interrupt"):
                pipe._interrupt = False

    missing = [needed[r] for r in range(n_rows) if images[r] == 0]
    if missing:
        raise RuntimeError(
            f"{hookpoint} never ran at steps {missing}: is it a module the UNet uses?"
        )
    return ConceptStats(
        concept=concept,
        mean=(sums / images[:, None]).float(),
        active_frac=(active / tokens[:, None]).float(),
        n_prompts=len(prompts),
        timesteps=timesteps.float(),
        meta={
            "prompts": prompts,
            "hookpoint": hookpoint,
            "sae": sae.meta.get("source"),
            "num_inference_steps": num_inference_steps,
            "steps": needed,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "cfg_half": cfg_half,
            "activation_site": activation_site,
        },
    )


# -- selection --------------------------------------------------------------------------------


def percentile_count(n_latents: int, percentile: float) -> int:
    """How many of ``n_latents`` distinct scores lie strictly above their ``percentile``.

    numpy's linear interpolation puts the percentile at rank ``(n - 1) p / 100``; with 20,480
    latents, 99.999 / 99.995 / 99.99 give 1 / 2 / 3. Used to turn a percentile into a
    ``tau`` where only a count makes sense (the shortcut).
    """
    position = (n_latents - 1) * percentile / 100.0
    return max(1, n_latents - 1 - math.floor(position))


def _normalised(mu: Tensor) -> Tensor:
    total = mu.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mu / total.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)


def _pooled_mean(others: Sequence[ConceptStats]) -> Tensor:
    """Prompt-weighted mean of several concepts' means: the mean over all their prompts."""
    weights = torch.tensor([o.n_prompts for o in others], dtype=torch.float64)
    stacked = torch.stack([o.mean.double() for o in others])
    return ((stacked * weights[:, None, None]).sum(0) / weights.sum()).float()


def contrastive_scores(target: ConceptStats, others: Sequence[ConceptStats]) -> Tensor:
    """``[steps, n_latents]``: ``mu_c / sum(mu_c) - mu_notc / sum(mu_notc)`` at each step."""
    _check_compatible(target, others)
    mu_c = target.mean.double()
    mu_notc = _pooled_mean(others).double()
    return _normalised(mu_c) - _normalised(mu_notc)


def _check_compatible(target: ConceptStats, others: Sequence[ConceptStats]) -> None:
    if not others:
        raise ValueError("contrastive selection needs the statistics of at least one other concept")
    for other in others:
        if other.mean.shape != target.mean.shape:
            raise ValueError(
                f"statistics of {other.concept!r} {tuple(other.mean.shape)} do not match "
                f"{target.concept!r} {tuple(target.mean.shape)}: same SAE and steps needed"
            )
        if other.steps != target.steps:
            raise ValueError(
                f"{other.concept!r} was read at steps {other.steps}, {target.concept!r} at "
                f"{target.steps}"
            )
        for key in ("hookpoint", "num_inference_steps"):
            a, b = target.meta.get(key), other.meta.get(key)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{key} differs: {target.concept!r} {a}, {other.concept!r} {b}")


def _pack(rows: list[Tensor], *values: Tensor) -> tuple[Tensor, ...]:
    """Per-step index lists -> ``[steps, m]`` tensors padded with -1 (indices) and 0."""
    width = max((len(r) for r in rows), default=0)
    indices = torch.full((len(rows), width), -1, dtype=torch.long)
    packed = [torch.zeros(len(rows), width) for _ in values]
    for step, chosen in enumerate(rows):
        indices[step, : len(chosen)] = chosen
        for out, value in zip(packed, values, strict=True):
            out[step, : len(chosen)] = value[step, chosen].float()
    return (indices, *packed)


def _top(scores: Tensor, eligible: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` best eligible scores, best first (ties: lower index first)."""
    candidates = torch.nonzero(eligible).flatten()
    order = torch.argsort(-scores[candidates], stable=True)
    return candidates[order[:count]]


def select_contrastive(
    target: ConceptStats,
    others: Sequence[ConceptStats],
    *,
    percentile: float | None = None,
    tau: int | None = None,
    active_range: tuple[float, float] | None = None,
    max_other_ratio: float | None = None,
) -> ConceptFeatures:
    """The latents that tell ``target`` apart from ``others``, per step (method.md section 4).

    Exactly one of ``percentile`` (keep scores strictly above the p-th percentile, numpy
    linear interpolation) and ``tau`` (keep the top tau) is given. ``active_range=(lo, hi)``
    (seed 003) first removes from the candidates every latent active on fewer than ``lo`` or
    more than ``hi`` of the target's tokens; the percentile is then taken over the remaining
    candidates, so the filter does not leave a step empty just because its best latent was
    dropped. ``max_other_ratio=r`` likewise drops every latent whose mean on any single other
    concept exceeds ``r`` times its mean on the target: the score compares the target with the
    pool of others, so a latent shared with one close neighbour (dotted and grainy) can win it
    and then be erased on that neighbour too. Thresholds: the mean over all concepts of their
    per-concept means.
    """
    if (percentile is None) == (tau is None):
        raise ValueError("give exactly one of percentile and tau")
    if percentile is not None and not 0 < percentile < 100:
        raise ConfigError("percentile", f"got {percentile!r}; must be > 0 and < 100")
    if tau is not None and tau < 1:
        raise ConfigError("tau", f"got {tau!r}; must be >= 1")
    if active_range is not None and not 0 <= active_range[0] < active_range[1] <= 1:
        raise ConfigError("active_range", f"got {active_range!r}; need 0 <= lo < hi <= 1")
    if max_other_ratio is not None and not max_other_ratio > 0:
        raise ConfigError("max_other_ratio", f"got {max_other_ratio!r}; must be > 0")
    others = list(others)
    scores = contrastive_scores(target, others)
    eligible = torch.ones_like(scores, dtype=torch.bool)
    if active_range is not None:
        lo, hi = active_range
        eligible = (target.active_frac >= lo) & (target.active_frac <= hi)
    if max_other_ratio is not None:
        loudest_other = torch.stack([o.mean for o in others]).amax(0)
        eligible &= (target.mean > 0) & (loudest_other <= max_other_ratio * target.mean)

    rows: list[Tensor] = []
    for step in range(target.num_steps):
        ok = eligible[step]
        if not bool(ok.any()):
            rows.append(torch.zeros(0, dtype=torch.long))
            continue
        if tau is not None:
            rows.append(_top(scores[step], ok, tau))
            continue
        candidate_scores = scores[step][ok].numpy()
        cut = float(np.percentile(candidate_scores, percentile, method="linear"))
        above = ok & (scores[step] > cut)
        rows.append(_top(scores[step], above, int(above.sum())))

    # Threshold: every concept counts once, whatever its number of prompts.
    threshold = torch.stack([target.mean] + [o.mean for o in others]).mean(0)
    indices, mean, thr = _pack(rows, target.mean, threshold)
    counts = [len(r) for r in rows]
    if sum(counts) == 0:
        logger.warning("concept %r: no latent selected at any step", target.concept)
    meta = _features_meta(target) | {
        "method": "contrastive",
        "percentile": percentile,
        "tau": tau,
        "active_range": list(active_range) if active_range is not None else None,
        "max_other_ratio": max_other_ratio,
        "others": [o.concept for o in others],
        "others_prompts": sum(o.n_prompts for o in others),
        "selected_per_step": counts,
    }
    if target.steps != list(range(int(target.meta.get("num_inference_steps", target.num_steps)))):
        logger.warning(
            "concept %r: statistics cover steps %s only; they are mapped onto sampling steps "
            "by position in the schedule",
            target.concept,
            target.steps,
        )
    return ConceptFeatures(
        concept=target.concept,
        indices=indices,
        mean=mean,
        threshold=thr,
        timesteps=target.timesteps.clone(),
        meta=meta,
    )


def select_shortcut(
    target: ConceptStats,
    *,
    tau: int,
    step: int = 0,
    neutral: ConceptStats | None = None,
) -> ConceptFeatures:
    """Seed 000's shortcut: the top ``tau`` latents by mean activation at one row ``step``.

    The result holds one step, i.e. it applies at every sampling step. Threshold: 0 (edit
    wherever the latent is active) unless ``neutral`` statistics of the same denoising step
    are given; then the neutral mean of each latent, so only tokens where the latent is more
    active than on ordinary content are edited.
    """
    if tau < 1:
        raise ConfigError("tau", f"got {tau!r}; must be >= 1")
    if not 0 <= step < target.num_steps:
        raise ValueError(f"step: got {step}; the statistics hold {target.num_steps} rows")
    mean = target.mean[step]
    chosen = _top(mean, mean > 0, tau)
    if len(chosen) < tau:
        logger.warning(
            "concept %r: only %d latents are ever active at step %d; asked for %d",
            target.concept,
            len(chosen),
            target.steps[step],
            tau,
        )
    threshold = torch.zeros_like(mean)
    if neutral is not None:
        schedule_step = target.steps[step]
        if schedule_step not in neutral.steps or neutral.num_latents != target.num_latents:
            raise ValueError(
                f"neutral statistics (steps {neutral.steps}, {neutral.num_latents} latents) "
                f"lack step {schedule_step} with {target.num_latents} latents"
            )
        threshold = neutral.mean[neutral.steps.index(schedule_step)]
    indices, mean_row, thr = _pack([chosen], mean[None], threshold[None])
    meta = _features_meta(target) | {
        "method": "shortcut",
        "tau": tau,
        "shortcut_step": target.steps[step],
        "threshold": "neutral mean" if neutral is not None else "zero",
        "neutral": neutral.concept if neutral is not None else None,
        "selected_per_step": [len(chosen)],
    }
    return ConceptFeatures(
        concept=target.concept,
        indices=indices,
        mean=mean_row,
        threshold=thr,
        timesteps=target.timesteps[step : step + 1].clone(),
        meta=meta,
    )


def _features_meta(target: ConceptStats) -> dict[str, Any]:
    keep = (
        "hookpoint",
        "model",
        "sae",
        "num_inference_steps",
        "steps",
        "guidance_scale",
        "seed",
        "cfg_half",
        "activation_site",
    )
    meta = {k: target.meta[k] for k in keep if k in target.meta}
    meta["n_prompts"] = target.n_prompts
    return meta


# -- cache ------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SAEURON_CACHE/concepts``, else ``~/.cache/saeuron/concepts``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "saeuron") / "concepts"


def sae_fingerprint(sae: Sae) -> str:
    """Hash of the SAE's source, architecture and weights: a retrained SAE never hits the cache."""
    digest = hashlib.sha256()
    digest.update(json.dumps(
        {"source": sae.meta.get("source"), "cfg": sae.cfg.to_dict()}, sort_keys=True
    ).encode())
    for name, tensor in sorted(sae.state_for_disk().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_id(model: str) -> str:
    """The model's name for cache keys: local folders by absolute path, others as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def stats_cache_key(**settings: Any) -> str:
    """SHA-256 of every setting that determines a :class:`ConceptStats` (JSON, sorted keys)."""
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


# -- config and entry point -------------------------------------------------------------------


@dataclass
class ConceptBuildConfig(Config):
    """Settings of ``saeuron concept build``: which latents to edit for one concept."""

    concept: str = field(help="the concept to find, e.g. 'Van Gogh' or 'cat'")
    model: str = field(help="diffusion model: tiny-sd, a bundled name, a folder or a hub id")
    sae: str = field(help="SAE folder or Hugging Face repo id")
    hookpoint: str | None = field(
        None, help="module the SAE reads, e.g. unet.up_blocks.1.attentions.1; default: the SAE's"
    )
    method: str = field(
        "contrastive",
        help="'contrastive': concept vs other concepts at every step (the paper); 'shortcut': "
        "top latents of the concept's own images at one step (seed 000)",
    )
    prompts: str | None = field(
        None,
        help="file with the concept's prompts, one a line (all are used); default: "
        "num_prompts templated prompts (contrastive) or the concept itself (shortcut)",
    )
    num_prompts: int = field(20, help="templated prompts of the concept when no file is given")
    others: str | None = field(
        None,
        help="prompts of the other concepts: a text file (one concept), a JSON file "
        "{concept: [prompts]}, or 'neutral' (bundled set); default: 'neutral' for "
        "contrastive, none for shortcut (threshold 0)",
    )
    num_inference_steps: int = field(50, help="sampling steps of the statistics' schedule")
    guidance_scale: float = field(7.5, help="classifier-free guidance scale while sampling")
    percentile: float = field(
        99.999, help="keep latents scoring strictly above this percentile (20,480 latents: 1)"
    )
    tau: int | None = field(None, help="keep the top tau latents per step; overrides percentile")
    activity_filter: bool = field(
        False, help="drop latents active on too few or too many of the concept's tokens (seed 003)"
    )
    min_active: float = field(0.01, help="activity filter: lowest share of active tokens")
    max_active: float = field(0.99, help="activity filter: highest share of active tokens")
    max_other_ratio: float | None = field(
        None,
        help="drop latents whose mean on any one other concept exceeds this share of their "
        "mean on the concept (e.g. 0.5); default: no such filter",
    )
    shortcut_step: int = field(10, help="shortcut: the denoising step whose activations count")
    shortcut_images: int = field(20, help="shortcut: images generated from the concept's name")
    batch_size: int = field(4, help="prompts sampled at once")
    seed: int = field(0, help="prompt i is sampled with seed + i")
    device: str | None = field(None, help="device of the pipeline; default: best available")
    cfg_half: str = field(
        "cond", help="'cond': read the conditional half of the CFG batch; 'both': every row"
    )
    cache_dir: str | None = field(
        None,
        help=f"statistics cache; default ${CACHE_ENV}/concepts or ~/.cache/saeuron/concepts",
    )
    out: str | None = field(None, help="write the features to OUT.safetensors + OUT.json")

    def __post_init__(self) -> None:
        for name in ("concept", "model", "sae"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, f"got {value!r}; must be a non-empty string")
        for name in ("hookpoint", "out", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise ConfigError(name, "must be a non-empty string when given")
        check_choice("method", self.method, METHODS)
        check_choice("cfg_half", self.cfg_half, CFG_HALVES)
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise ConfigError("prompts", f"file {self.prompts!r} does not exist")
        if self.others is not None and self.others != NEUTRAL and not Path(self.others).is_file():
            raise ConfigError(
                "others", f"got {self.others!r}; expected an existing file or {NEUTRAL!r}"
            )
        check_range("num_prompts", self.num_prompts, ge=1)
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("guidance_scale", self.guidance_scale, ge=0)
        check_range("percentile", self.percentile, gt=0, lt=100)
        if self.tau is not None:
            check_range("tau", self.tau, ge=1)
        check_range("min_active", self.min_active, ge=0, le=1)
        check_range("max_active", self.max_active, ge=0, le=1)
        if self.min_active >= self.max_active:
            raise ConfigError(
                "min_active",
                f"got {self.min_active!r}; must be < max_active ({self.max_active!r})",
            )
        if self.max_other_ratio is not None:
            check_range("max_other_ratio", self.max_other_ratio, gt=0)
        check_range("shortcut_step", self.shortcut_step, ge=0)
        if self.method == "shortcut":
            check_range("shortcut_step", self.shortcut_step, lt=self.num_inference_steps)
        check_range("shortcut_images", self.shortcut_images, ge=1)
        check_range("batch_size", self.batch_size, ge=1)
        check_range("seed", self.seed, ge=0)
        check_device("device", self.device)
        if self.cache_dir is None:
            self.cache_dir = str(default_cache_dir())

    @property
    def active_range(self) -> tuple[float, float] | None:
        return (self.min_active, self.max_active) if self.activity_filter else None


class _LazyPipeline:
    """Loads the pipeline on first use, so fully cached builds never load the model."""

    def __init__(self, cfg: ConceptBuildConfig, pipe: Any):
        self.cfg = cfg
        self.pipe = pipe

    def get(self) -> Any:
        if self.pipe is None:
            from .pipelines import load_pipeline

            self.pipe = load_pipeline(self.cfg.model, device=self.cfg.device)
        return self.pipe


def _other_sets(cfg: ConceptBuildConfig) -> dict[str, list[str]]:
    source = cfg.others if cfg.others is not None else NEUTRAL
    sets = {NEUTRAL: neutral_prompts()} if source == NEUTRAL else read_other_concepts(source)
    # The target is never one of its own "other concepts".
    sets.pop(cfg.concept, None)
    if not sets:
        raise ConfigError("others", f"{source} holds no concept other than {cfg.concept!r}")
    return sets


def build_concept(
    cfg: ConceptBuildConfig, pipe: Any | None = None, sae: Sae | None = None
) -> ConceptFeatures:
    """Compute (or read from the cache) the statistics ``cfg`` needs and select the features.

    ``pipe`` must be the model ``cfg.model`` names: the cache knows models by that name only.
    The pipeline is loaded only if some statistics are not cached yet.
    """
    if sae is None:
        sae = Sae.from_pretrained(cfg.sae, hookpoint=cfg.hookpoint)
    hookpoint = cfg.hookpoint or sae.meta.get("hookpoint")
    if not hookpoint:
        raise ConfigError(
            "hookpoint",
            "the SAE does not say where it reads; pass e.g. unet.up_blocks.1.attentions.1",
        )
    site = sae.meta.get("activation_site", "output")
    check_choice("activation_site", site, ACTIVATION_SITES)
    lazy = _LazyPipeline(cfg, pipe)
    cache = StatsCache(cfg.cache_dir or default_cache_dir())
    shared = {
        "model": model_id(cfg.model),
        "sae": sae_fingerprint(sae),
        "hookpoint": hookpoint,
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "seed": cfg.seed,
        "cfg_half": cfg.cfg_half,
        "activation_site": site,
        "method": cfg.method,
    }
    steps = [cfg.shortcut_step] if cfg.method == "shortcut" else None

    def stats_for(concept: str, prompts: list[str]) -> ConceptStats:
        key = stats_cache_key(**shared, concept=concept, prompts=prompts, steps=steps)

        def compute() -> ConceptStats:
            stats = collect_stats(
                lazy.get(),
                sae,
                prompts,
                concept=concept,
                hookpoint=hookpoint,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                seed=cfg.seed,
                cfg_half=cfg.cfg_half,
                steps=steps,
                batch_size=cfg.batch_size,
                activation_site=site,
            )
            stats.meta.update(model=cfg.model, sae=str(sae.meta.get("source", cfg.sae)))
            return stats

        return cache.get_or_compute(key, concept, compute)

    if cfg.method == "contrastive":
        prompts = (
            read_prompt_file(cfg.prompts)
            if cfg.prompts
            else concept_prompts(cfg.concept, cfg.num_prompts)
        )
        target = stats_for(cfg.concept, prompts)
        others = [stats_for(name, p) for name, p in _other_sets(cfg).items()]
        features = select_contrastive(
            target,
            others,
            percentile=None if cfg.tau is not None else cfg.percentile,
            tau=cfg.tau,
            active_range=cfg.active_range,
            max_other_ratio=cfg.max_other_ratio,
        )
    else:
        prompts = (
            read_prompt_file(cfg.prompts) if cfg.prompts else [cfg.concept] * cfg.shortcut_images
        )
        target = stats_for(cfg.concept, prompts)
        neutral = None
        if cfg.others is not None:
            others = [stats_for(name, p) for name, p in _other_sets(cfg).items()]
            neutral = ConceptStats(
                concept=",".join(o.concept for o in others),
                mean=_pooled_mean(others),
                active_frac=torch.zeros_like(others[0].active_frac),
                n_prompts=sum(o.n_prompts for o in others),
                timesteps=others[0].timesteps,
                meta={"steps": others[0].steps},
            )
        tau = cfg.tau if cfg.tau is not None else percentile_count(sae.num_latents, cfg.percentile)
        features = select_shortcut(target, tau=tau, step=0, neutral=neutral)
        if cfg.tau is None:
            features.meta["percentile"] = cfg.percentile
    if cfg.method == "shortcut":
        for name, on in (("activity_filter", cfg.activity_filter),
                         ("max_other_ratio", cfg.max_other_ratio is not None)):
            if on:
                logger.warning("%s applies to the contrastive method only; ignored", name)
    if cfg.out:
        features.save(cfg.out)
        logger.info("concept %r: features written to %s", cfg.concept, cfg.out)
    return features


# -- command line -----------------------------------------------------------------------------


def summarize(features: ConceptFeatures) -> str:
    """One line per fact: steps, latents per step, distinct latents."""
    counts = [int((row >= 0).sum()) for row in features.indices]
    per_step = (
        f"{counts[0]} at every step"
        if features.num_steps == 1
        else f"min {min(counts)}, mean {sum(counts) / len(counts):.2f}, max {max(counts)} per step"
    )
    latents = sorted(features.latents())
    shown = ", ".join(map(str, latents[:20])) + (" ..." if len(latents) > 20 else "")
    return (
        f"concept {features.concept!r} ({features.meta.get('method', '?')}, "
        f"{features.num_steps} step{'s' if features.num_steps != 1 else ''} at "
        f"{features.hookpoint}): {per_step}; {len(latents)} distinct latents: {shown}"
    )


def _cli_build(args: argparse.Namespace) -> int:
    cfg = ConceptBuildConfig.from_args(args)
    features = build_concept(cfg)
    print(summarize(features))
    if cfg.out:
        base = Path(cfg.out).with_suffix("")
        print(f"written to {base}.safetensors + {base}.json")
    else:
        print("not saved (pass --out FILE to keep the features)")
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "concept", help="find the SAE latents of a concept", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="concept_command", metavar="ACTION")
    sub.required = True
    build = sub.add_parser(
        "build",
        help="select a concept's latents (statistics are cached)",
        description="Select the SAE latents to edit for CONCEPT and optionally save them.",
    )
    build.add_argument("concept", metavar="CONCEPT", help="the concept, e.g. 'cat'")
    build.add_argument("--model", required=True, help="diffusion model (tiny-sd, folder, hub id)")
    build.add_argument("--sae", required=True, help="SAE folder or Hugging Face repo id")
    ConceptBuildConfig.add_arguments(build, skip=("concept", "model", "sae"))
    build.set_defaults(handler=_cli_build)
