"""Where an SAE reads, by name: the activation sites, the rows of a CFG batch, and which
hookpoints sit inside a prompt encoder.

Names only, without torch: configs check their fields against them, and ``--help`` reads
the configs. :mod:`saeuron.models.tokens` and :mod:`saeuron.models.prompt_encoders` act on
the tensors and re-export these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GUIDANCE_HALVES = ("cond", "both")
"""``cond``: the conditional half of a CFG batch; ``both``: every row."""
GUIDANCE_HALF = "guidance_half"
"""The setting that picks one of :data:`GUIDANCE_HALVES`."""
GUIDANCE_HALF_ALIASES = ("cfg_half",)
"""Its earlier names: configs, statistics, features, captures and trials tables written
before the rename still hold them."""
ACTIVATION_SITES = ("output", "update", "guidance")
"""``output``: the block's output (residual stream, the paper); ``update``: output - input
(sdxl-unbox); ``guidance``: the conditional minus the unconditional output of a CFG batch,
what the prompt adds at the block (edits go to the conditional rows)."""
GUIDANCE_SITE = "guidance"

PROMPT_ENCODER_PREFIX = "text_encoder"


def prompt_encoder_of(hookpoint: str) -> str | None:
    """The pipeline component (``text_encoder``, ``text_encoder_2``, ...) ``hookpoint`` is
    inside, or None for a denoiser hookpoint."""
    head = hookpoint.split(".", 1)[0]
    return head if head.startswith(PROMPT_ENCODER_PREFIX) else None


def renamed_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Stored ``settings`` with an earlier name of :data:`GUIDANCE_HALF` under the current
    one, so that files written before the rename read (and compare) as new ones do."""
    out = dict(settings)
    for old in GUIDANCE_HALF_ALIASES:
        if old in out:
            value = out.pop(old)
            out.setdefault(GUIDANCE_HALF, value)
    return out
