"""The settings of ``saeuron minicanvas train`` (:class:`ModelTrainConfig`), in a module
without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.model` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saeuron.minicanvas.config_parts import NAME
from saeuron.models.bundle_lookup import Bundle
from saeuron.models.resolve import ResolvedModel, resolve_model
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null
from saeuron.utils.config_parts import Device, LearningRate, Output, Seed


@dataclass
class ModelTrainConfig(Config):
    output: Output = field(Output(out=""), flatten=True, help="where the pipeline goes", describe={
        "out": "folder for the pipeline; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)"})
    seeding: Seed = field(Seed, flatten=True, help="the seed",
                          describe={"seed": "seed of data, initialisation and training"})
    n_images: int = field(
        20000, ge=1, le=100_000_000, help="procedural training images of one object"
    )
    n_scenes: int = field(
        10000, ge=0, le=100_000_000, help="procedural training scenes of two objects"
    )
    vae_steps: int = field(1500, ge=1, le=100_000_000, help="autoencoder optimisation steps")
    vae_from: str = field(
        "",
        help="reuse the autoencoder of this pipeline (a folder or a bundle name, such as "
        "minicanvas) instead of training one",
    )
    vae_batch: int = field(64, ge=1, le=65536, help="autoencoder batch size")
    unet_steps: int = field(
        4500, ge=1, le=100_000_000, help="UNet + text encoder optimisation steps"
    )
    unet_batch: int = field(64, ge=1, le=65536, help="UNet batch size")
    init_from: str = field(
        "",
        help="start the UNet and text encoder from this pipeline's weights (a folder or a "
        "bundle name) and fine-tune them, instead of training from scratch",
    )
    rate: LearningRate = field(LearningRate(lr=5e-4), flatten=True, help="the learning rate",
                               required=("lr",), limits={"lr": {"le": 1}},
                               describe={"lr": "peak learning rate of the UNet and text encoder"})
    ema_decay: float = field(0.999, ge=0, lt=1, help="EMA decay of the weights that are saved")
    caption_dropout: float = field(0.1, ge=0, lt=1, help="share of empty captions (for CFG)")
    threads: int = field(0, ge=0, le=4096, help="torch CPU threads; 0 leaves torch's default")
    save_every: int = field(
        0,
        ge=0,
        le=100_000_000,
        help="also save the EMA pipeline every N denoiser steps (0: end only)",
    )
    runtime: Device = field(Device, flatten=True, help="where it trains",
                            describe={"device": "cpu, cuda, mps; default: the best available"})

    def __post_init__(self) -> None:
        refuse_null(self, "out")
        # The pipelines this command reads from, and the bundle it writes into by default,
        # looked up once here: training reads the results.
        self.vae_source: ResolvedModel | None = (
            resolve_model(self.vae_from, "vae_from") if self.vae_from else None
        )
        self.init_source: ResolvedModel | None = (
            resolve_model(self.init_from, "init_from") if self.init_from else None
        )
        self._default_bundle: Bundle | None = None if self.out else resolve_model(NAME).bundle
        for name in ("n_images", "vae_steps", "vae_batch", "unet_steps", "unet_batch"):
            check_range(name, getattr(self, name), ge=1)
        check_range("lr", self.lr, gt=0)
        check_range("ema_decay", self.ema_decay, ge=0, lt=1)
        check_range("caption_dropout", self.caption_dropout, ge=0, lt=1)
        check_range("threads", self.threads, ge=0)
        check_range("n_scenes", self.n_scenes, ge=0)
        check_range("save_every", self.save_every, ge=0)

    def output_folder(self) -> Path:
        """Where the pipeline goes: ``out``, else the MiniCanvas bundle found by name (the
        user's copy when that is the one shipped in the package)."""
        if self.out:
            return Path(self.out)
        # Copying a shipped bundle out of the package is model code's: imported once the
        # command runs, not when --help reads these fields.
        from saeuron.models.bundles import writable_folder  # noqa: PLC0415

        bundle = self._default_bundle
        if bundle is None:
            raise ConfigError("out", "no MiniCanvas bundle is installed here; name a folder")
        return writable_folder(bundle)
