"""The SAE's architecture, stored as ``cfg.json`` with the EleutherAI sae/sparsify keys."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.utils.config import Config, ConfigError, field


@dataclass
class SaeConfig(Config):
    """Architecture of a TopK SAE (sparsify-compatible keys; the paper's values by default).

    ``d_in`` is the width of the hooked activation; a training config leaves it ``None``
    and the trainer fills it in from the captured data.
    """

    d_in: int | None = field(None, ge=1, help="width of the hooked activation (channels)")
    expansion_factor: int = field(
        16, ge=1, help="num_latents = d_in x expansion_factor when num_latents is 0"
    )
    num_latents: int = field(
        0, ge=0, help="number of latents; 0 derives it from expansion_factor"
    )
    k: int = field(32, ge=1, help="active latents per token")
    normalize_decoder: bool = field(True, help="keep decoder rows at unit L2 norm")
    batch_topk: bool = field(True, help="trained with BatchTopK (top k x tokens over the batch)")
    input_unit_norm: bool = field(
        False, help="standardise each token before encoding (the paper: off)"
    )
    multi_topk: bool = field(False, help="kept for checkpoint compatibility; unused")
    sample_topk: bool = field(False, help="kept for checkpoint compatibility; unused")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_latents == 0 and self.d_in is not None:
            self.num_latents = self.d_in * self.expansion_factor
        if self.num_latents and self.k > self.num_latents:
            raise ConfigError(
                "k", f"got {self.k}; must be <= num_latents ({self.num_latents})"
            )

    def with_width(self, d_in: int) -> SaeConfig:
        """This architecture at a known input width (``num_latents`` derived if unset)."""
        if self.d_in is not None and self.d_in != d_in:
            raise ConfigError("d_in", f"the config says {self.d_in}, the data has {d_in}")
        return self.replace(d_in=d_in)
