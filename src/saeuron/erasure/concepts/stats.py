"""A concept's statistics: the SAE codes of its prompts, averaged per denoising step.

A concept's prompts run through the stock pipeline with a hook on the SAE's hookpoint; every
token of every needed step is SAE-encoded (per-token TopK) and averaged over the image's
tokens, then over prompts (SAeUron, section 3)::

    mu_c[t] = mean over c's prompts of the token-mean code at step t

Inside a text encoder (``text_encoder.final_layer_norm``) nothing is sampled: the encoder
runs on the tokenized prompts, and the statistics have one row.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.models.denoiser import denoiser_device
from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.layout import check_hook_width
from saeuron.models.prompt_encoders import encode_prompts, prompt_encoder_of
from saeuron.models.sites import renamed_settings
from saeuron.models.tokens import (
    ACTIVATION_SITES,
    GUIDANCE_HALVES,
    input_tensor,
    output_tensor,
    site_rows,
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError, check_choice, check_range
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)


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
            meta=renamed_settings(info.get("meta", {})),
        )


class _StopSampling(Exception):
    """Raised from the step callback by pipelines that do not honour ``_interrupt``."""


def _unet_device(pipe: Any) -> torch.device:
    return denoiser_device(pipe)


def _code_sums(sae: Sae, part: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T, C]`` tokens -> (sum over images of the token-mean code, count of active
    (token, latent) pairs), float64 on the host."""
    t = part.shape[1]
    top = sae.encode(part)
    idx = top.top_indices.flatten()
    acts = top.top_acts.flatten().float()
    # All images have t tokens, so summing acts / t sums the per-image token means.
    row_sum = acts.new_zeros(sae.num_latents).index_add_(0, idx, acts / t)
    row_active = acts.new_zeros(sae.num_latents).index_add_(0, idx, (acts > 0).float())
    return row_sum.double().cpu(), row_active.double().cpu()


def _prompt_encoder_stats(
    pipe: Any,
    sae: Sae,
    prompts: list[str],
    concept: str,
    hookpoint: str,
    module: Any,
    component: str,
    batch_size: int,
    progress: bool,
) -> ConceptStats:
    """:func:`collect_stats` inside a text encoder: one row, from the encoder alone."""
    sae.to(next(module.parameters(), torch.empty(0)).device)
    sums = torch.zeros(1, sae.num_latents, dtype=torch.float64)
    active = torch.zeros(1, sae.num_latents, dtype=torch.float64)
    counts = [0, 0]  # images, tokens

    def hook(mod: Any, args: tuple[Any, ...], output: Any) -> None:
        part = to_tokens(output_tensor(mod, output))
        row_sum, row_active = _code_sums(sae, part)
        sums[0] += row_sum
        active[0] += row_active
        counts[0] += part.shape[0]
        counts[1] += part.shape[0] * part.shape[1]

    removable = module.register_forward_hook(hook)
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=f"stats {concept}",
                          unit="batch", disable=not progress):  # fmt: skip
            encode_prompts(pipe, component, prompts[start : start + batch_size])
    finally:
        removable.remove()
    return ConceptStats(
        concept=concept,
        mean=(sums / counts[0]).float(),
        active_frac=(active / counts[1]).float(),
        n_prompts=len(prompts),
        timesteps=torch.full((1,), float("nan")),
        meta={
            "prompts": prompts, "hookpoint": hookpoint, "sae": sae.meta.get("source"),
            "num_inference_steps": 1, "steps": [0], "activation_site": "output",
        },
    )  # fmt: skip


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
    guidance_half: str = "cond",
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
    prompts = list(prompts)
    needed = _needed_steps(
        prompts, concept, num_inference_steps, batch_size, guidance_half, activation_site, steps
    )
    module = resolve_module(pipe, hookpoint)
    # Before any sampling: an SAE of another width would fail inside the first step.
    check_hook_width(module, sae.d_in, hookpoint)
    component = prompt_encoder_of(hookpoint)
    if component:
        return _prompt_encoder_stats(pipe, sae, prompts, concept, hookpoint, module, component,
                                     batch_size, progress)  # fmt: skip
    device = _unet_device(pipe)
    sae.to(device)
    with track_denoising(pipe) as state:
        recorder = _Recorder(
            sae, needed, state, num_inference_steps, guidance_half, activation_site
        )
        _sample(pipe, module, recorder, prompts, concept, num_inference_steps, guidance_scale,
                seed, batch_size, progress)  # fmt: skip
    meta = {
        "prompts": prompts,
        "hookpoint": hookpoint,
        "sae": sae.meta.get("source"),
        "num_inference_steps": num_inference_steps,
        "steps": needed,
        "guidance_scale": guidance_scale,
        "seed": seed,
        "guidance_half": guidance_half,
        "activation_site": activation_site,
    }
    return recorder.result(concept, hookpoint, len(prompts), meta)


def _needed_steps(
    prompts: list[str],
    concept: str,
    num_inference_steps: int,
    batch_size: int,
    guidance_half: str,
    activation_site: str,
    steps: Sequence[int] | None,
) -> list[int]:
    """The schedule indices to record, sorted; every setting is refused before any sampling."""
    if not prompts:
        raise ConfigError("prompts", f"concept {concept!r} has no prompts")
    check_range("num_inference_steps", num_inference_steps, ge=1)
    check_range("batch_size", batch_size, ge=1)
    check_choice("guidance_half", guidance_half, GUIDANCE_HALVES)
    check_choice("activation_site", activation_site, ACTIVATION_SITES)
    needed = sorted(set(range(num_inference_steps) if steps is None else (int(s) for s in steps)))
    if not needed or needed[0] < 0 or needed[-1] >= num_inference_steps:
        raise ConfigError(
            "steps", f"got {steps!r}; expected step indices in [0, {num_inference_steps - 1}]"
        )
    return needed


class _Recorder:
    """Running sums of the SAE codes at the needed steps, filled by a forward hook."""

    def __init__(
        self,
        sae: Sae,
        needed: list[int],
        state: Any,
        num_inference_steps: int,
        guidance_half: str,
        activation_site: str,
    ):
        self.sae = sae
        self.needed = needed
        self.row_of = {s: r for r, s in enumerate(needed)}
        self.state = state
        self.num_inference_steps = num_inference_steps
        self.guidance_half = guidance_half
        self.activation_site = activation_site
        n_rows, n_latents = len(needed), sae.num_latents
        # float64 on the host: sums over thousands of prompts lose no precision.
        self.sums = torch.zeros(n_rows, n_latents, dtype=torch.float64)
        self.active = torch.zeros(n_rows, n_latents, dtype=torch.float64)
        self.images = torch.zeros(n_rows, dtype=torch.long)
        self.tokens = torch.zeros(n_rows, dtype=torch.long)
        self.timesteps = torch.full((n_rows,), float("nan"), dtype=torch.float64)
        self.seen_in_batch: set[int] = set()
        self.schedule_warned = False
        # Pipelines that honour ``_interrupt`` stop cleanly; the others are stopped by raising.
        self.honours_interrupt = False

    def hook(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        state = self.state
        row = self.row_of.get(state.step)
        # One record per step: a second-order scheduler's second call is not a new step.
        if row is None or state.substep:
            return
        if state.num_steps != self.num_inference_steps and not self.schedule_warned:
            logger.warning(
                "the scheduler runs %d timesteps for %d inference steps; step indices "
                "refer to scheduler.timesteps",
                state.num_steps,
                self.num_inference_steps,
            )
            self.schedule_warned = True
        out = output_tensor(mod, output)
        inp = input_tensor(mod, args, kwargs) if self.activation_site == "update" else None
        picked = site_rows(out, inp, self.activation_site, state.guidance, self.guidance_half)
        if picked is None:
            raise ConfigError("activation_site", "'guidance' needs guidance_scale > 1")
        part = to_tokens(picked[0])
        b, t, _ = part.shape
        row_sum, row_active = _code_sums(self.sae, part)
        self.sums[row] += row_sum
        self.active[row] += row_active
        self.images[row] += b
        self.tokens[row] += b * t
        self.timesteps[row] = state.timestep
        self.seen_in_batch.add(state.step)

    def on_step_end(self, p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(self.seen_in_batch) == len(self.needed):
            if not self.honours_interrupt:
                raise _StopSampling
            p._interrupt = True
        return {}

    def result(
        self, concept: str, hookpoint: str, n_prompts: int, meta: dict[str, Any]
    ) -> ConceptStats:
        missing = [self.needed[r] for r in range(len(self.needed)) if self.images[r] == 0]
        if missing:
            raise RuntimeError(
                f"{hookpoint} never ran at steps {missing}: is it a module the UNet uses?"
            )
        return ConceptStats(
            concept=concept,
            mean=(self.sums / self.images[:, None]).float(),
            active_frac=(self.active / self.tokens[:, None]).float(),
            n_prompts=n_prompts,
            timesteps=self.timesteps.float(),
            meta=meta,
        )


def _sample(
    pipe: Any,
    module: Any,
    recorder: _Recorder,
    prompts: list[str],
    concept: str,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Sample ``prompts`` batch by batch with ``recorder`` hooked on ``module``."""
    recorder.honours_interrupt = isinstance(getattr(type(pipe), "interrupt", None), property)
    # Pipelines without step callbacks (PixArt) sample every step; only rows in
    # ``needed`` are recorded either way.
    takes_callback = "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    stop_early = recorder.needed[-1] < num_inference_steps - 1 and takes_callback
    early = {"callback_on_step_end": recorder.on_step_end} if stop_early else {}
    removable = module.register_forward_hook(recorder.hook, with_kwargs=True)
    bar = tqdm(total=len(prompts), desc=f"stats {concept}", unit="prompt", disable=not progress)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            generators = [
                torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(batch))
            ]
            recorder.seen_in_batch.clear()
            try:
                pipe(
                    prompt=batch,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    generator=generators,
                    output_type="latent",
                    **early,
                )
            except _StopSampling:
                pass
            bar.update(len(batch))
    finally:
        bar.close()
        removable.remove()
        if hasattr(pipe, "_interrupt"):
            pipe._interrupt = False
