"""The settings of ``saeuron minicanvas saemnesia build`` (:class:`SupervisedBuildConfig`), in
a module without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.saemnesia` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import (
    MINICANVAS_GUIDANCE,
    MINICANVAS_STEPS,
    NAME,
)
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.training.supervised_config import EarlyStopping
from saeuron.utils.config import Config, check_range, field
from saeuron.utils.config_parts import (
    GuidanceScale,
    InferenceSteps,
    LearningRate,
    Output,
    Seed,
    Workdir,
)


@dataclass
class SupervisedBuildConfig(ResolvesModel, Config):
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "the MiniCanvas pipeline"})
    output: Output = field(Output, flatten=True, help="where the bundle goes", describe={
        "out": "bundle folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)"})
    denoising: InferenceSteps = field(MINICANVAS_STEPS, flatten=True,
                                      required=("num_inference_steps",), help="the capture's steps",
                                      describe={"num_inference_steps": "DDIM steps of the "
                                                "capture (as the assets)"},
                                      limits={"num_inference_steps": {"ge": 1, "le": 1000}})
    guidance: GuidanceScale = field(MINICANVAS_GUIDANCE, flatten=True,
                                    required=("guidance_scale",), help="the capture's guidance",
                                    describe={"guidance_scale": "CFG scale of the capture"},
                                    limits={"guidance_scale": {"ge": 0, "le": 100}})
    # The paper's 5e-6 suits its 16k-prompt SAE; on MiniCanvas' 4,600 labelled images it
    # barely moves the latents in 50 epochs (BCE 0.81 -> 0.80), 3e-3 separates them.
    rate: LearningRate = field(LearningRate(lr=3e-3), flatten=True, help="the learning rate",
                               required=("lr",), limits={"lr": {"le": 1}},
                               describe={"lr": "Adam learning rate of the fine-tune"})
    stopping: EarlyStopping = field(EarlyStopping(max_epochs=80, patience=5), flatten=True,
                                    help="when the fine-tune stops", describe={
        "max_epochs": "at most this many epochs",
        "patience": "early stopping: epochs without held-out gain"})
    seeding: Seed = field(Seed, flatten=True, help="the seed",
                          describe={"seed": "seed of capture and fine-tune"})
    work: Workdir = field(Workdir, flatten=True, help="intermediate files", describe={
        "workdir": "where activations go; default: a temporary folder"})

    def __post_init__(self) -> None:
        self._resolve_model()
        for name in ("num_inference_steps", "max_epochs", "patience"):
            check_range(name, getattr(self, name), ge=1)
        check_range("lr", self.lr, gt=0)
