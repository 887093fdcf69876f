"""The settings of ``saeuron minicanvas sequential`` (:class:`SequentialConfig`), in a module
without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.sequential` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import (
    MINICANVAS_STEPS,
    Objects,
    PromptSeeds,
    Styles,
)
from saeuron.minicanvas.world import TEST_SEEDS, concept_kind
from saeuron.utils.atomic import check_output_folder
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null
from saeuron.utils.config_parts import BatchSize, InferenceSteps, Output

DEFAULT_STYLES = ("striped", "checkered", "diagonal", "grainy", "outlined", "pastel")
DEFAULT_OBJECTS = ("moon", "triangle", "heart", "square", "arrow", "star")
SEQUENTIAL_VARIANTS = ("saeuron", "recipe")


@dataclass
class SequentialConfig(Config):
    output: Output = field(Output(out="minicanvas-sequential"), flatten=True,
                           help="where results go",
                           describe={"out": "folder for results.json and results.md"})
    erased_styles: Styles = field(Styles(styles=list(DEFAULT_STYLES)), flatten=True,
                                  help="the styles",
                                  describe={"styles": "styles erased one after another"})
    erased_objects: Objects = field(Objects(objects=list(DEFAULT_OBJECTS)), flatten=True,
                                    help="the objects",
                                    describe={"objects": "objects erased one after another"})
    prompt_seeds: PromptSeeds = field(PromptSeeds(seeds=list(TEST_SEEDS[:1])), flatten=True,
                                      help="the seeds",
                                      describe={"seeds": "seeds of every (object, style) prompt"})
    denoising: InferenceSteps = field(MINICANVAS_STEPS, flatten=True,
                                      required=("num_inference_steps",), help="the steps",
                                      describe={"num_inference_steps": "DDIM steps"},
                                      limits={"num_inference_steps": {"ge": 1, "le": 1000}})
    batches: BatchSize = field(BatchSize(batch_size=50), flatten=True, help="the batches",
                               describe={"batch_size": "images per pipeline call"},
                               limits={"batch_size": {"le": 4096}})
    variant: str = field(
        "recipe",
        choices=SEQUENTIAL_VARIANTS,
        help="'recipe' (the default recipes) or 'saeuron' (the published method, tuned gamma)",
    )
    extra: bool = field(
        True, help="also UA-alias and in-scene scores of the erased concepts (first seed)"
    )

    def __post_init__(self) -> None:
        refuse_null(self, "out", "styles", "objects", "seeds")
        for kind, names in (("style", self.styles), ("object", self.objects)):
            for name in names:
                if concept_kind(name) != kind:
                    raise ConfigError(f"{kind}s", f"{name!r} is not a MiniCanvas {kind}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind}s", "each concept once")
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        check_output_folder(self.out, "out")
