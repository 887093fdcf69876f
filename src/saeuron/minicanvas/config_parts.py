"""The config keys the MiniCanvas commands share among themselves, each declared once.

A command's config nests a part with ``flatten=True`` (its keys stay at the command's level in
JSON and on the command line), sets the command's default with the instance it nests, its help
text with ``describe`` and its bounds with ``limits``. These parts declare no bounds of their
own: the commands differ in what they accept (``guided build`` takes any number of steps and
checks its guidance scale itself, ``bench`` caps both), and a part's own bounds would apply to,
and be shown for, every command.

Some of these keys are shared beyond MiniCanvas too: ``steps`` with ``saeuron ui``, and the
UnlearnCanvas protocol's keys (``styles``, ``objects``, ``template``, ``seeds``,
``retain_seeds``) with the ``unlearncanvas`` metric, which judges the same kind of prompts.

The keys the commands share with the rest of the package come from
:mod:`saeuron.utils.config_parts` (model, out, seed, workdir, batch_size, device) and
:mod:`saeuron.training.train_config` (lr, epochs, topk, dead_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.utils.config import Config, field
from saeuron.utils.config_parts import MAX_SEED, GuidanceScale, InferenceSteps

NAME = "minicanvas"
NUM_INFERENCE_STEPS = 20
GUIDANCE_SCALE = 7.5
MINICANVAS_STEPS = InferenceSteps(num_inference_steps=NUM_INFERENCE_STEPS)
"""What the MiniCanvas commands nest for ``num_inference_steps`` (DDIM steps)."""
MINICANVAS_GUIDANCE = GuidanceScale(guidance_scale=GUIDANCE_SCALE)
"""What the MiniCanvas commands nest for ``guidance_scale`` (the CFG scale)."""


@dataclass
class SaeSize(Config):
    """The size of the SAEs a build trains (``SaeConfig``'s ``k`` and ``expansion_factor``)."""

    k: int = field(8, help="SAE: active latents per token")
    expansion_factor: int = field(16, help="SAE: latents per input channel")


@dataclass
class PromptSeeds(Config):
    seeds: list[int] | None = field(None, ge=0, le=MAX_SEED, help="seeds of the prompts")


@dataclass
class Steps(Config):
    """The denoising steps of a command that names them ``steps`` (the demo, the web page)."""

    steps: int = field(20, help="denoising steps")


@dataclass
class RetainSeeds(Config):
    retain_seeds: int = field(1, help="seeds per prompt of the concepts not erased")


UNLEARNCANVAS_TEMPLATE = "An image of {object} in {style} style."
"""The UnlearnCanvas prompt of an (object, style) pair."""


# The UnlearnCanvas vocabulary a command works on: the MiniCanvas sequential run erases these,
# the UnlearnCanvas metric prompts them.
@dataclass
class Styles(Config):
    styles: list[str] | None = field(None, help="styles")


@dataclass
class Objects(Config):
    objects: list[str] | None = field(None, help="objects")


@dataclass
class Template(Config):
    template: str = field(
        UNLEARNCANVAS_TEMPLATE, help="prompt template with {object} and {style}"
    )


@dataclass
class Variants(Config):
    variants: list[str] | None = field(None, help="the erasure variants compared")
