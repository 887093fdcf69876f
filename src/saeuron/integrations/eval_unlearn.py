"""``SAeUronPipeline``: the object eval-unlearn's own ``saeuron`` technique drives.

eval-unlearn (the unlearning benchmark, PyPI ``eval-unlearn``) ships a ``saeuron`` technique
of its own: a thin wrapper that reads its config (``erase_concept``, ``multiplier``,
``device``, ``use_fp16``, ``num_inference_steps``, ``guidance_scale``; the model is fixed to
Stable Diffusion 1.4) and makes exactly these two calls::

    pipe = saeuron.SAeUronPipeline(
        concept=..., multiplier=..., model_id=..., device=..., use_fp16=...
    )
    images = pipe.generate(
        prompts, seed=..., num_inference_steps=..., guidance_scale=..., **kwargs
    )

This class answers them with :class:`saeuron.erasure.technique.SAeUron`, so a benchmark run through
eval-unlearn samples with the same code as ``saeuron generate`` and the Python API.
"""

from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Sequence
from numbers import Real
from typing import Any

from saeuron.erasure.technique import DEFAULT_MODEL, SAeUron
from saeuron.utils.errors import ConfigError

logger = logging.getLogger(__name__)

# eval-unlearn's argument names for two of SAeUron's config keys.
_RENAMED = {"erase_concept": "concept", "model": "model_id"}
RECIPE_ENV = "SAEURON_RECIPE"
"""An erasure recipe for runs driven by eval-unlearn, whose ``saeuron`` technique passes no
key of ours: its edits and strengths replace the multiplier eval-unlearn always sends."""


class SAeUronPipeline:
    """SAeUron with the constructor and ``generate`` signature eval-unlearn calls.

    Args:
        concept: the concept to erase (SAeUron's ``erase_concept``); any phrase. Concepts
            without shipped features are computed on the fly at construction.
        multiplier: gamma, the scale of the concept's latents (negative erases). ``None``:
            the concept's tuned value if it has one, else -20.0. eval-unlearn always passes
            its own value (default -20.0).
        model_id: hub id, local folder, or a bundled/test model name (``minicanvas``,
            ``tiny-sd``); default Stable Diffusion 1.4, as in eval-unlearn.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``None`` picks CUDA, then MPS, then CPU.
        use_fp16: half precision where it is fast (CUDA, MPS); float32 elsewhere.
        **options: any other key of :class:`saeuron.erasure.technique.SAeUronConfig`
            (``recipe``, ``sae``, ``hookpoint``, ``features``, ``num_inference_steps``,
            ``guidance_scale``, ``guidance_half``, ``batch_size``, ...); eval-unlearn passes none.
            ``recipe`` (or the environment variable ``SAEURON_RECIPE``, for runs started by
            eval-unlearn) erases the concept with a recipe's edits and strengths; the
            multiplier is then not used.

    Bad values raise :class:`saeuron.ConfigError` naming the argument, before any
    model loads.
    """

    def __init__(
        self,
        concept: str = "nudity",
        multiplier: float | None = None,
        model_id: str = DEFAULT_MODEL,
        device: str | None = None,
        use_fp16: bool = True,
        **options: Any,
    ) -> None:
        for key, ours in _RENAMED.items():
            if key in options:
                raise ConfigError(key, f"SAeUronPipeline takes it as {ours}=...")
        if not isinstance(concept, str) or not concept.strip():
            raise ConfigError("concept", f"got {concept!r}; must be a non-empty string")
        recipe = options.get("recipe") or os.environ.get(RECIPE_ENV) or None
        if recipe is not None:
            options["recipe"] = recipe
            if multiplier is not None:
                logger.info("recipe %s holds the strengths: multiplier %s not used", recipe,
                            multiplier)  # fmt: skip
                multiplier = None
        config = {
            **options,
            "erase_concept": concept,
            "multiplier": multiplier,
            "model": model_id,
            "device": device,
            "use_fp16": use_fp16,
        }
        try:
            self.technique = SAeUron(**config)
        except ConfigError as err:
            if err.field not in _RENAMED:
                raise
            # Report the name the caller used, not SAeUron's.
            message = str(err)[len(err.field) + 2 :]
            raise ConfigError(_RENAMED[err.field], message) from err

    @property
    def pipe(self) -> Any:
        """The underlying diffusers pipeline (unhooked outside ``generate``)."""
        return self.technique.pipe

    @property
    def multiplier(self) -> float:
        """The strength in use (the resolved value when ``multiplier=None``; with a recipe,
        its first edit's strength)."""
        return self.technique.multiplier

    def generate(
        self,
        prompts: str | Sequence[str],
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """One PIL image per prompt, in order, with the concept erased.

        Seeding follows eval-unlearn's own diffusers techniques: prompt ``i`` is sampled from
        ``seed + i`` (a CPU ``torch.Generator``, so the noise is the same on every device);
        ``seed=None`` draws fresh noise from torch's global generator. ``num_inference_steps``
        and ``guidance_scale`` default to the values given at construction (50 and 7.5).
        Other keyword arguments go to :meth:`SAeUron.generate` (``erase_concept=False`` gives
        the same images without the erasure) and from there to the diffusers pipeline call
        (``negative_prompt``, ``height``, ``width``, ...).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompts", "must be a string or a sequence of strings")
        if seed is not None:
            seed = _integer("seed", seed)
        if num_inference_steps is not None:
            num_inference_steps = _integer("num_inference_steps", num_inference_steps)
            if num_inference_steps < 1:
                raise ConfigError("num_inference_steps", f"got {num_inference_steps}; must be >= 1")
        if guidance_scale is not None and (
            isinstance(guidance_scale, bool)
            or not isinstance(guidance_scale, Real)
            or not math.isfinite(guidance_scale)
        ):
            raise ConfigError("guidance_scale", f"got {guidance_scale!r}; must be a finite number")
        output_type = kwargs.get("output_type", "pil")
        if output_type != "pil":
            raise ConfigError(
                "output_type", f"got {output_type!r}; SAeUronPipeline returns PIL images only"
            )
        return self.technique.generate(
            list(prompts),
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=None if guidance_scale is None else float(guidance_scale),
            **kwargs,
        )

    def __repr__(self) -> str:
        cfg = self.technique.config
        return (
            f"SAeUronPipeline(concept={cfg.erase_concept!r}, multiplier={self.multiplier}, "
            f"model_id={cfg.model!r}, device={str(self.technique.device)!r})"
        )


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(name, f"got {value!r}; must be an integer")
    try:
        return operator.index(value)
    except TypeError as err:
        raise ConfigError(name, f"got {value!r}; must be an integer") from err
