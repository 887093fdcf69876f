"""The settings of ``saeuron minicanvas guided build`` (:class:`GuidedBuildConfig`), in a
module without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.guided` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import (
    MINICANVAS_GUIDANCE,
    MINICANVAS_STEPS,
    NAME,
    SaeSize,
)
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.training.train_config import DeadTokens, Epochs, TopkMode
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field
from saeuron.utils.config_parts import (
    BatchSize,
    GuidanceScale,
    InferenceSteps,
    Output,
    Seed,
    Workdir,
)

DEFAULT_HOOKPOINTS = ["unet.up_blocks.2.attentions.2", "unet.up_blocks.1.attentions.1"]


@dataclass
class GuidedBuildConfig(ResolvesModel, Config):
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "the MiniCanvas pipeline"})
    output: Output = field(Output, flatten=True, help="where the bundle goes", describe={
        "out": "bundle folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)"})
    hookpoints: list[str] = field(list(DEFAULT_HOOKPOINTS), help="blocks to train SAEs at")
    prompts_per_pair: int = field(
        5, help="anchor prompts per (object, style) pair (each its own seed), plus unstyled ones"
    )
    # No limits: this command checks its numbers in __post_init__ (guidance must be > 1).
    denoising: InferenceSteps = field(MINICANVAS_STEPS, flatten=True,
                                      required=("num_inference_steps",), help="the capture's steps",
                                      describe={"num_inference_steps": "DDIM steps of the capture"})
    guidance: GuidanceScale = field(MINICANVAS_GUIDANCE, flatten=True,
                                    required=("guidance_scale",), help="the capture's guidance",
                                    describe={"guidance_scale": "CFG scale of the capture (must "
                                              "be > 1)"})
    size: SaeSize = field(SaeSize, flatten=True, help="the SAEs' size")
    mode: TopkMode = field(TopkMode, flatten=True, help="the top k",
                           describe={"topk": "'batch' (BatchTopK) or 'token'"})
    passes: Epochs = field(Epochs(epochs=6), flatten=True, help="SAE training passes",
                           describe={"epochs": "SAE training epochs"})
    batches: BatchSize = field(BatchSize(batch_size=1024), flatten=True, help="SAE batches",
                               describe={"batch_size": "SAE training batch (tokens)"})
    dead: DeadTokens = field(DeadTokens(dead_tokens=50_000), flatten=True, help="dead latents",
                             describe={"dead_tokens": "a latent silent for this many tokens gets "
                                       "the AuxK loss (revives it)"})
    prefixed_copies: int = field(
        0, help="extra copies of each anchor prompt, each in a random anchor phrasing behind "
        "0 to --prefix-words random words of the tokenizer's vocabulary: the concept words "
        "in the contexts an attacker's prefix or a new phrasing puts them in"
    )
    prefix_words: int = field(5, help="most random words in front of a prefixed copy")
    seeding: Seed = field(Seed, flatten=True, help="the seed",
                          describe={"seed": "seed of capture, training and the prefixed copies"})
    work: Workdir = field(Workdir, flatten=True, help="intermediate files",
                          describe={"workdir": "where captures go; default: a temporary folder"})
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
