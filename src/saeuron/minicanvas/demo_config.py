"""The settings of ``saeuron demo`` (:class:`DemoConfig`), in a module without torch, so
that ``saeuron demo --help`` reads them without loading the model;
:mod:`saeuron.minicanvas.demo` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import Steps, Variants
from saeuron.utils.atomic import check_output_file
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field, refuse_null
from saeuron.utils.config_parts import Output, Seed

DEMO_VARIANTS = ("recipe", "paper")
"""``recipe``: what ``SAeUron(erase_concept=c, model="minicanvas")`` does by default (each
concept's tuned recipe); ``paper``: the published SAeUron method with its tuned gamma."""


@dataclass
class DemoConfig(Config):
    output: Output = field(Output(out="demo.png"), flatten=True, help="where the grid goes",
                           describe={"out": "before/after grid image (.png)"})
    object: str = field("moon", help="MiniCanvas object to erase")
    style: str = field("checkered", help="MiniCanvas style to erase")
    denoising: Steps = field(Steps, flatten=True, help="the steps",
                             describe={"steps": "DDIM steps"},
                             limits={"steps": {"ge": 1, "le": 1000}})
    seeding: Seed = field(Seed(seed=188), flatten=True, help="the seed",
                          describe={"seed": "seed of the sampled images"})
    retain: int = field(
        20, ge=1, le=90, help="images of other concepts used for retention accuracy"
    )
    shown: Variants = field(Variants(variants=list(DEMO_VARIANTS)), flatten=True,
                            help="the erasures shown", describe={
        "variants": "erasures shown side by side: 'recipe' (the default, each concept's tuned "
        "recipe) and 'paper' (the published SAeUron method)"})

    def __post_init__(self) -> None:
        # MiniCanvas's concepts are known by its world module, which needs numpy: loaded
        # when a demo is configured to run, not when --help reads these fields.
        from saeuron.minicanvas.world import concept_kind  # noqa: PLC0415

        refuse_null(self, "out", "variants")
        if not self.out.lower().endswith(".png"):
            raise ConfigError("out", f"got {self.out!r}; must end in .png")
        if concept_kind(self.object) != "object":
            raise ConfigError("object", f"{self.object!r} is a style, not an object")
        if concept_kind(self.style) != "style":
            raise ConfigError("style", f"{self.style!r} is an object, not a style")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ConfigError("variants", f"got {self.variants!r}; name each variant once")
        for variant in self.variants:
            check_choice("variants", variant, DEMO_VARIANTS)
        check_range("steps", self.steps, ge=1)
        check_range("retain", self.retain, ge=1, le=90)
        check_output_file(self.out, "out")
