"""The settings of ``saeuron minicanvas bench`` (:class:`BenchConfig`) and the variants it
compares, in a module without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.bench` and :mod:`saeuron.minicanvas.judge` re-export them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import (
    MINICANVAS_GUIDANCE,
    MINICANVAS_STEPS,
    NAME,
    PromptSeeds,
    RetainSeeds,
    Template,
    Variants,
)
from saeuron.minicanvas.world import (
    OBJECTS,
    SCENE_TEST_TEMPLATES,
    STYLES,
    TEST_SEEDS,
    TEST_TEMPLATES,
    concept_kind,
)
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.utils.atomic import check_output_folder
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null
from saeuron.utils.config_parts import BatchSize, GuidanceScale, InferenceSteps, Output, Quick

VARIANTS = (
    "none", "negative_prompt", "saeuron", "saeuron_guidance_both", "saeuron_paper_error",
    "saemnesia", "recipe",
)
VARIANT_LABELS = {
    "none": "no erasure",
    "negative_prompt": "concept as negative prompt",
    "saeuron": "SAeUron (defaults: cond half, exact error)",
    "saeuron_guidance_both": "SAeUron, guidance_half=both",
    "saeuron_paper_error": "SAeUron, error_term=paper",
    "saemnesia": "SAEmnesia (supervised SAE, one latent per concept)",
    "recipe": "the default: each concept's tuned recipe (text encoder and/or guidance-site "
    "blocks, its own rule)",
}

# A regression guard for CI on the default erasure (the recipes): concepts whose erasure met
# the quick test's bounds (UA up by at least 0.5, IRA and CRA at least 0.8) at its 10 steps
# and 2 seeds; the full benchmark reports every concept and every variant.
QUICK_CONCEPTS = ("moon", "triangle", "checkered")
DEFAULT_VARIANTS = ("none", "saeuron", "recipe", "saemnesia")


@dataclass
class BenchConfig(ResolvesModel, Config):
    output: Output = field(Output(out="minicanvas-bench"), flatten=True, help="where results go",
                           describe={"out": "folder for results.json, results.md, grid.png"})
    smoke: Quick = field(Quick, flatten=True, help="the CI-sized run", describe={
        "quick": "a CI-sized subset: 3 concepts, 2 variants, 2 seeds, 10 steps"})
    concepts: list[str] | None = field(None, help="concepts to erase; default: all 20")
    rows: Variants = field(Variants, flatten=True, help="the table's rows", describe={
        "variants": "rows of the table; default: none, saeuron (the published method), recipe "
        "(the default), saemnesia"})
    target_seeds: PromptSeeds = field(PromptSeeds, flatten=True, help="the target seeds",
                                      describe={"seeds": "seeds of the target prompts; default: "
                                                "test seeds"})
    retained: RetainSeeds = field(RetainSeeds, flatten=True, help="the retained seeds",
                                  describe={"retain_seeds": "seeds per retained (non-target) "
                                            "prompt"},
                                  limits={"retain_seeds": {"ge": 1, "le": 100}})
    denoising: InferenceSteps = field(MINICANVAS_STEPS, flatten=True,
                                      required=("num_inference_steps",), help="the steps",
                                      describe={"num_inference_steps": "DDIM steps (quick: at "
                                                "most 10)"},
                                      limits={"num_inference_steps": {"ge": 1, "le": 1000}})
    guidance: GuidanceScale = field(MINICANVAS_GUIDANCE, flatten=True,
                                    required=("guidance_scale",), help="the guidance",
                                    describe={"guidance_scale": "CFG scale"},
                                    limits={"guidance_scale": {"ge": 0, "le": 100}})
    batches: BatchSize = field(BatchSize(batch_size=50), flatten=True, help="the batches",
                               describe={"batch_size": "images per pipeline call"},
                               limits={"batch_size": {"le": 4096}})
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "the MiniCanvas pipeline"})
    retain_every: int = field(
        1, ge=1, help="judge retention on every N-th retained prompt (1: all 90; for quick checks)"
    )
    grid_variant: str = field(
        "recipe", choices=VARIANTS, help="the variant whose erased images grid.png shows"
    )
    prompt: Template = field(Template(template=TEST_TEMPLATES[0]), flatten=True,
                             help="the prompt", describe={
        "template": "prompt template with {object} and {style} (held-out phrasings)"})
    alias_seeds: int = field(
        2, ge=0, le=100, help="test seeds for the other-name prompts (UA-alias); 0: none"
    )
    scene_seeds: int = field(
        2, ge=0, le=100, help="test seeds for the two-object scenes (10 per seed); 0: none"
    )
    scene_template: str = field(
        SCENE_TEST_TEMPLATES[0], help="scene template with {object}, {object2} and {style}"
    )

    def __post_init__(self) -> None:
        refuse_null(self, "out")
        self._resolve_model()
        if "{object}" not in self.template or "{style}" not in self.template:
            raise ConfigError(
                "template", f"got {self.template!r}; it needs {{object}} and {{style}}"
            )
        if any(f"{{{k}}}" not in self.scene_template for k in ("object", "object2", "style")):
            raise ConfigError(
                "scene_template",
                f"got {self.scene_template!r}; it needs {{object}}, {{object2}} and {{style}}",
            )
        # The defaults are filled into the nested parts, where the keys live: an attribute
        # set on the config itself would hide them from to_dict and replace.
        if self.quick:
            self.concepts = self.concepts or list(QUICK_CONCEPTS)
            self.rows.variants = self.variants or ["none", "recipe"]
            self.denoising.num_inference_steps = min(self.num_inference_steps, 10)
            self.target_seeds.seeds = self.seeds or list(TEST_SEEDS[:2])
            self.alias_seeds, self.scene_seeds = min(self.alias_seeds, 1), min(self.scene_seeds, 1)
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        self.rows.variants = self.variants or list(DEFAULT_VARIANTS)
        if "none" not in self.variants:
            self.variants.insert(0, "none")
        self.target_seeds.seeds = self.seeds or list(TEST_SEEDS)
        for concept in self.concepts:
            concept_kind(concept)
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError("variants", f"got {variant!r}; allowed: {', '.join(VARIANTS)}")
        check_range("retain_seeds", self.retain_seeds, ge=1, le=len(self.seeds))
        check_range("alias_seeds", self.alias_seeds, ge=0, le=len(self.seeds))
        check_range("scene_seeds", self.scene_seeds, ge=0, le=len(self.seeds))
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("batch_size", self.batch_size, ge=1)
        check_output_folder(self.out, "out")
