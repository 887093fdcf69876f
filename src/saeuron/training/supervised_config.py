"""The settings of SAEmnesia's supervised fine-tune (:class:`SupervisedTrainConfig`), in a
module without torch, so that ``saeuron train --help`` reads them without loading torch;
:mod:`saeuron.training.supervised` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass, field

from saeuron.training.train_config import Activations
from saeuron.utils.config import Config, ConfigError, check_range
from saeuron.utils.config import field as config_field
from saeuron.utils.config_parts import Device, Output, Seed


@dataclass
class SupervisedSettings:
    bce: float = 3.0
    corr: float = 0.1
    l1: float = 0.01
    lr: float = 5e-6
    batch_images: int = 128
    max_epochs: int = 50
    patience: int = 3
    heldout: float = 0.1
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class EarlyStopping(Config):
    """When a supervised fine-tune stops; MiniCanvas's SAEmnesia build shares the keys."""

    max_epochs: int = config_field(50, ge=1, le=1_000_000, help="at most this many passes")
    patience: int = config_field(
        3, ge=1, le=1_000_000, help="stop after this many epochs without held-out gain"
    )


@dataclass
class SupervisedTrainConfig(Config):
    """``saeuron train --supervised``: SAEmnesia's fine-tune of an SAE on labelled images."""

    labels: str = config_field(
        help="CSV, one row per captured prompt: an optional 'prompt' column and one column "
        "per kind (object, style, ...) naming the prompt's concept"
    )
    init_sae: str = config_field(help="the unsupervised SAE to start from (folder or hub id)")
    data: Activations = config_field(Activations, flatten=True, help="what it trains on",
                                     required=("activations",), describe={
        "activations": "capture folder (guidance_half='cond') of labelled prompts"})
    output: Output = config_field(Output, flatten=True, help="where the SAE goes",
                                  required=("out",), describe={
        "out": "output folder; the SAE goes to OUT/<hookpoint>/"})
    bce: float = config_field(3.0, ge=0, le=1000, help="weight of the concept BCE")
    corr: float = config_field(
        0.1, ge=0, le=1000, help="weight of the object/style squared correlation"
    )
    l1: float = config_field(0.01, ge=0, le=1000, help="weight of the L1 penalty")
    supervised_lr: float = config_field(
        5e-6, gt=0, le=1, help="Adam learning rate (the paper's 5e-6)"
    )
    batch_images: int = config_field(
        128, ge=1, le=1_000_000, help="images per step (the paper's 128)"
    )
    stopping: EarlyStopping = config_field(EarlyStopping, flatten=True, help="when it stops")
    seeding: Seed = config_field(Seed, flatten=True, help="the seed", describe={
        "seed": "seed of the held-out split and the shuffle"})
    runtime: Device = config_field(Device, flatten=True, help="where it trains", describe={
        "device": "torch device; default: CUDA, MPS, CPU"})

    def __post_init__(self) -> None:
        for name in ("activations", "labels", "out", "init_sae"):
            if not str(getattr(self, name) or "").strip():
                raise ConfigError(name, "must be given")
        for name in ("bce", "corr", "l1"):
            check_range(name, getattr(self, name), ge=0)
        check_range("supervised_lr", self.supervised_lr, gt=0)
        for name in ("batch_images", "max_epochs", "patience"):
            check_range(name, getattr(self, name), ge=1)

    def settings(self) -> SupervisedSettings:
        return SupervisedSettings(
            bce=self.bce, corr=self.corr, l1=self.l1, lr=self.supervised_lr,
            batch_images=self.batch_images, max_epochs=self.max_epochs,
            patience=self.patience, seed=self.seed,
        )  # fmt: skip
