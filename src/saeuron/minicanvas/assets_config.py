"""The settings of ``saeuron minicanvas assets`` (:class:`AssetConfig`) and the bundle's name
and sampling defaults, in a module without torch, so that ``--help`` reads them without
loading the model; :mod:`saeuron.minicanvas.assets` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.minicanvas.config_parts import (
    GUIDANCE_SCALE,
    MINICANVAS_GUIDANCE,
    MINICANVAS_STEPS,
    NAME,
    NUM_INFERENCE_STEPS,
    SaeSize,
)
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.training.train_config import Epochs
from saeuron.utils.config import Config, field
from saeuron.utils.config_parts import (
    BatchSize,
    GuidanceScale,
    InferenceSteps,
    Output,
    Seed,
    Workdir,
)

__all__ = ["GUIDANCE_SCALE", "NAME", "NUM_INFERENCE_STEPS", "AssetConfig"]


@dataclass
class AssetConfig(ResolvesModel, Config):
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "the MiniCanvas pipeline to build assets "
                                             "for"})
    output: Output = field(Output, flatten=True, help="where the assets go", describe={
        "out": "output folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)"})
    denoising: InferenceSteps = field(MINICANVAS_STEPS, flatten=True,
                                      required=("num_inference_steps",), help="the capture's steps",
                                      describe={"num_inference_steps": "DDIM steps of capture "
                                                "and statistics"},
                                      limits={"num_inference_steps": {"ge": 1, "le": 1000}})
    guidance: GuidanceScale = field(MINICANVAS_GUIDANCE, flatten=True,
                                    required=("guidance_scale",), help="the capture's guidance",
                                    describe={"guidance_scale": "CFG scale of capture and "
                                              "statistics"},
                                    limits={"guidance_scale": {"ge": 0}})
    size: SaeSize = field(SaeSize, flatten=True, help="the SAEs' size",
                          limits={"k": {"ge": 1}, "expansion_factor": {"ge": 1}})
    # The anchor set is small (about 74k tokens at 4x4 tokens per image): smaller batches and
    # more passes reach a held-out FVU of about 0.3 where the paper's 4096 x 10 stops near 0.5.
    passes: Epochs = field(Epochs(epochs=30), flatten=True, help="SAE training passes",
                           describe={"epochs": "SAE training epochs"},
                           limits={"epochs": {"ge": 1}})
    batches: BatchSize = field(BatchSize(batch_size=1024), flatten=True, help="SAE batches",
                               describe={"batch_size": "SAE training batch (tokens)"})
    seeding: Seed = field(Seed, flatten=True, help="the seed")
    work: Workdir = field(Workdir, flatten=True, help="intermediate files", describe={
        "workdir": "where activations go; default: a temporary folder"})

    def __post_init__(self) -> None:
        self._resolve_model()
