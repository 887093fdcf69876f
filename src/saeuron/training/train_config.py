"""The settings of SAE training (:class:`TrainConfig`), in a module without torch, so that
``saeuron train --help`` reads them without loading torch; :mod:`saeuron.training.trainer`
re-exports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saeuron.sae.config import SaeConfig
from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.config_parts import BatchSize, Device, LearningRate, Output, Seed
from saeuron.utils.storage import check_location, is_url

TOPK_MODES = ("batch", "token")


# The training keys other SAE builders (the MiniCanvas assets and guided builds) share with
# TrainConfig, each declared once; a nesting config gives them its defaults, help text and
# bounds. Epochs and DeadTokens declare no bounds: the guided build checks its own and shows
# none, so each nesting config states them (limits).
@dataclass
class TopkMode(Config):
    topk: str = field("batch", choices=TOPK_MODES, help="how the top k latents are chosen")


@dataclass
class Epochs(Config):
    epochs: int = field(5, help="training epochs")


@dataclass
class DeadTokens(Config):
    dead_tokens: int = field(10_000_000, help="a latent silent for this many tokens is dead")


@dataclass
class Activations(Config):
    activations: str | None = field(
        None,
        help="capture folder written by `saeuron cache` (manifest.json): a local path or an "
        "fsspec URL (s3://..., gs://..., hf://...); shards are streamed, one at a time",
    )


@dataclass
class TrainConfig(Config):
    """How to train one SAE on one capture folder (defaults: the SAeUron paper)."""

    data: Activations = field(Activations, flatten=True, help="what it trains on",
                              required=("activations",))  # fmt: skip
    output: Output = field(Output, flatten=True, help="where the SAE goes", required=("out",),
                           describe={"out": "output folder; the SAE goes to OUT/<hookpoint>/"})
    sae: SaeConfig = field(SaeConfig, flatten=True, help="the SAE's architecture")
    mode: TopkMode = field(TopkMode, flatten=True, help="the top k", describe={
        "topk": "'batch': BatchTopK in training, k x tokens over the batch (the paper's); "
        "'token': k per token, the form used at inference and by eai-sparsify"})
    rate: LearningRate = field(LearningRate(lr=4e-4), flatten=True, help="the learning rate",
                               required=("lr",), limits={"lr": {"le": 1}},
                               describe={"lr": "Adam learning rate, decayed linearly to 0"})
    batches: BatchSize = field(BatchSize(batch_size=4096), flatten=True, help="the batches",
                               describe={"batch_size": "tokens per optimiser step"})
    passes: Epochs = field(Epochs, flatten=True, help="the passes",
                           describe={"epochs": "passes over the training shards"},
                           limits={"epochs": {"ge": 1, "le": 100_000}})
    auxk_alpha: float = field(1 / 32, ge=0, help="weight of the AuxK loss on dead latents")
    dead: DeadTokens = field(DeadTokens, flatten=True, help="dead latents",
                             limits={"dead_tokens": {"ge": 1}})
    grad_clip: float = field(1.0, ge=0, help="max global gradient L2 norm; 0 disables clipping")
    heldout_fraction: float = field(
        0.05, ge=0, lt=1, help="share of shards (the last) kept for held-out FVU"
    )
    seeding: Seed = field(Seed, flatten=True, help="the seed", describe={
        "seed": "seed of the SAE initialisation and the data shuffle"})
    runtime: Device = field(Device, flatten=True, help="where it trains", describe={
        "device": "torch device; default: CUDA, else MPS, else CPU"})
    shuffle_shards: int = field(
        2,
        ge=1,
        help="shards shuffled together; under N processes each holds about shuffle_shards/N "
        "of them, so a multiple of N keeps every process busy",
    )
    resume: bool = field(True, help="continue from the last finished epoch found in OUT")

    def __post_init__(self) -> None:
        super().__post_init__()
        # Paths are kept as strings so the config stays JSON-serialisable.
        self.activations = str(self.activations)
        self.out = str(self.out)
        if not self.activations:
            raise ConfigError("activations", "must name a capture folder")
        if not self.out:
            raise ConfigError("out", "must name an output folder")
        check_location(self.activations, "activations")
        if is_url(self.out):
            raise ConfigError("out", f"got {self.out!r}; the SAE is written to a local folder")

    @classmethod
    def add_arguments(cls, parser: Any, skip: Any = ()) -> None:
        # The width comes from the captured data, never from a flag.
        super().add_arguments(parser, skip=(*skip, "d_in"))
