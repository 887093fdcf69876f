"""The settings of ``saeuron minicanvas saemnesia build`` (:class:`SupervisedBuildConfig`), in
a module without torch, so that ``--help`` reads them without loading the model;
:mod:`saeuron.minicanvas.saemnesia` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.models.resolve import ResolvesModel
from saeuron.utils.config import Config, check_range, field


@dataclass
class SupervisedBuildConfig(ResolvesModel, Config):
    model: str = field("minicanvas", help="the MiniCanvas pipeline")
    out: str | None = field(
        None,
        help="bundle folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)",
    )
    num_inference_steps: int = field(
        20, ge=1, le=1000, help="DDIM steps of the capture (as the assets)"
    )
    guidance_scale: float = field(7.5, ge=0, le=100, help="CFG scale of the capture")
    # The paper's 5e-6 suits its 16k-prompt SAE; on MiniCanvas' 4,600 labelled images it
    # barely moves the latents in 50 epochs (BCE 0.81 -> 0.80), 3e-3 separates them.
    lr: float = field(3e-3, gt=0, le=1, help="Adam learning rate of the fine-tune")
    max_epochs: int = field(80, ge=1, le=1_000_000, help="at most this many epochs")
    patience: int = field(
        5, ge=1, le=1_000_000, help="early stopping: epochs without held-out gain"
    )
    seed: int = field(0, ge=0, le=2**63 - 1, help="seed of capture and fine-tune")
    workdir: str | None = field(None, help="where activations go; default: a temporary folder")

    def __post_init__(self) -> None:
        self._resolve_model()
        for name in ("num_inference_steps", "max_epochs", "patience"):
            check_range(name, getattr(self, name), ge=1)
        check_range("lr", self.lr, gt=0)
