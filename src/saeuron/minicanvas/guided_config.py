"""The settings of ``saeuron minicanvas guided build`` (:class:`GuidedBuildConfig`), in a
module without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.guided` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.models.resolve import ResolvesModel
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field

DEFAULT_HOOKPOINTS = ["unet.up_blocks.2.attentions.2", "unet.up_blocks.1.attentions.1"]


@dataclass
class GuidedBuildConfig(ResolvesModel, Config):
    model: str = field("minicanvas", help="the MiniCanvas pipeline")
    out: str | None = field(
        None,
        help="bundle folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)",
    )
    hookpoints: list[str] = field(list(DEFAULT_HOOKPOINTS), help="blocks to train SAEs at")
    prompts_per_pair: int = field(
        5, help="anchor prompts per (object, style) pair (each its own seed), plus unstyled ones"
    )
    num_inference_steps: int = field(20, help="DDIM steps of the capture")
    guidance_scale: float = field(7.5, help="CFG scale of the capture (must be > 1)")
    k: int = field(8, help="SAE: active latents per token")
    expansion_factor: int = field(16, help="SAE: latents per input channel")
    topk: str = field("batch", help="'batch' (BatchTopK) or 'token'")
    epochs: int = field(6, help="SAE training epochs")
    batch_size: int = field(1024, help="SAE training batch (tokens)")
    dead_tokens: int = field(
        50_000, help="a latent silent for this many tokens gets the AuxK loss (revives it)"
    )
    prefixed_copies: int = field(
        0, help="extra copies of each anchor prompt, each in a random anchor phrasing behind "
        "0 to --prefix-words random words of the tokenizer's vocabulary: the concept words "
        "in the contexts an attacker's prefix or a new phrasing puts them in"
    )
    prefix_words: int = field(5, help="most random words in front of a prefixed copy")
    seed: int = field(0, help="seed of capture, training and the prefixed copies")
    workdir: str | None = field(None, help="where captures go; default: a temporary folder")
    stats_kinds: list[str] = field(
        [], help="HOOKPOINT=KIND entries: write only that kind's statistics at that block "
        "(keeps the bundle small); default: both kinds everywhere"
    )

    def kinds_at(self, hookpoint: str) -> list[str]:
        chosen = [e.split("=", 1)[1] for e in self.stats_kinds if e.split("=", 1)[0] == hookpoint]
        return chosen or ["object", "style"]

    def __post_init__(self) -> None:
        self._resolve_model()
        for entry in self.stats_kinds:
            hookpoint, _, kind = entry.partition("=")
            if hookpoint not in self.hookpoints or kind not in ("object", "style"):
                raise ConfigError(
                    "stats_kinds", f"got {entry!r}; need HOOKPOINT=object|style with a "
                    f"hookpoint among {self.hookpoints}"
                )
        for name in ("prompts_per_pair", "num_inference_steps", "k", "expansion_factor",
                     "epochs", "batch_size", "dead_tokens", "prefix_words"):  # fmt: skip
            check_range(name, getattr(self, name), ge=1)
        check_range("prefixed_copies", self.prefixed_copies, ge=0)
        check_range("guidance_scale", self.guidance_scale, gt=1)
        check_choice("topk", self.topk, ("batch", "token"))
        if not self.hookpoints:
            raise ConfigError("hookpoints", "name at least one block")
