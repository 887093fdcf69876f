"""The features of one concept: which SAE latents to edit at each step, and how.

A :class:`ConceptFeatures` holds, per denoising step of the schedule its statistics came
from, the selected latent indices, the concept's mean activation of each (``mu_c``, which
scales the edit) and the activation threshold above which a token is edited (the mean of
the per-concept means; docs/method.md, section 5). One step means "the same at every step".
Stored as ``NAME.safetensors`` (tensors) + ``NAME.json`` (provenance and settings).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors
from saeuron.utils.text import read_text

logger = logging.getLogger(__name__)

SAE_FINGERPRINT = "sae_fingerprint"
"""Key of ``NAME.json`` holding :meth:`Sae.fingerprint` of the SAE the features were selected
from: erasing with another SAE (even one of the same shape) is refused."""
TENSOR_KEYS = ("indices", "mean", "threshold")


@dataclass
class ConceptFeatures:
    concept: str
    indices: Tensor
    """``[steps, m]`` int64 latent indices, ``-1`` pads steps with fewer than ``m``."""
    mean: Tensor
    """``[steps, m]`` the concept's mean activation of each selected latent."""
    threshold: Tensor
    """``[steps, m]`` edit a token's latent only where its activation exceeds this."""
    timesteps: Tensor | None = None
    """``[steps]`` scheduler timesteps the statistics were taken at (informational)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.indices.ndim == 1:
            self.indices, self.mean, self.threshold = (
                t.reshape(1, -1) for t in (self.indices, self.mean, self.threshold)
            )
        if not (self.indices.shape == self.mean.shape == self.threshold.shape):
            raise ValueError(
                f"concept {self.concept!r}: indices {tuple(self.indices.shape)}, mean "
                f"{tuple(self.mean.shape)} and threshold {tuple(self.threshold.shape)} differ"
            )
        self.indices = self.indices.long()
        self.mean = self.mean.float()
        self.threshold = self.threshold.float()
        for name in ("mean", "threshold"):
            values = getattr(self, name)
            if not bool(torch.isfinite(values).all()):
                # A NaN scale or threshold edits every token into NaN: a black image.
                raise ConfigError(
                    name, f"concept {self.concept!r}: holds NaN or infinite values"
                )

    @property
    def num_steps(self) -> int:
        return int(self.indices.shape[0])

    @property
    def hookpoint(self) -> str | None:
        return self.meta.get("hookpoint")

    def stats_step(self, step: int, num_steps: int) -> int:
        """Map sampling step ``step`` of ``num_steps`` onto the statistics' schedule.

        Steps are matched by their position in the schedule, so statistics taken with N
        steps serve sampling with M != N steps.
        """
        if self.num_steps == 1:
            return 0
        if num_steps == self.num_steps:
            return step
        if num_steps <= 1:
            return 0
        return round(step * (self.num_steps - 1) / (num_steps - 1))

    def at(self, stats_step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Indices, means and thresholds selected at one step of the statistics."""
        idx = self.indices[stats_step]
        keep = idx >= 0
        return idx[keep], self.mean[stats_step][keep], self.threshold[stats_step][keep]

    def latents(self) -> set[int]:
        return {int(i) for i in self.indices.flatten() if i >= 0}

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json`` (``path`` without suffix)."""
        base = Path(path).with_suffix("")
        tensors = {"indices": self.indices, "mean": self.mean, "threshold": self.threshold}
        if self.timesteps is not None:
            tensors["timesteps"] = self.timesteps.float()
        atomic_write_safetensors(base.with_suffix(".safetensors"), tensors)
        atomic_write_json(base.with_suffix(".json"), {"concept": self.concept, **self.meta})
        return base

    @classmethod
    def load(cls, path: str | Path, setting: str = "features") -> ConceptFeatures:
        """Read ``path.safetensors`` + ``path.json``; a missing or malformed file is a
        one-line error naming it (``setting`` names the input it came from)."""
        base = Path(path).with_suffix("")
        tensors_path, meta_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
        for file in (tensors_path, meta_path):
            if not file.is_file():
                raise ConfigError(
                    setting,
                    f"{file} does not exist (features are NAME.safetensors + NAME.json, "
                    "as saeuron concept build --out NAME writes them)",
                )
        try:
            meta = json.loads(read_text(meta_path, setting))
        except json.JSONDecodeError as err:
            raise FileFormatError(meta_path, f"not valid JSON ({err.msg})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("concept"), str):
            raise FileFormatError(meta_path, "expected a JSON object with a 'concept' name")
        try:
            tensors = load_file(tensors_path)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FileFormatError(
                tensors_path, f"not a readable safetensors file ({reason})"
            ) from None
        missing = [k for k in TENSOR_KEYS if k not in tensors]
        if missing:
            raise FileFormatError(
                tensors_path, f"holds {sorted(tensors)}; missing {', '.join(missing)}"
            )
        concept = meta.pop("concept")
        try:
            return cls(
                concept=concept,
                indices=tensors["indices"],
                mean=tensors["mean"],
                threshold=tensors["threshold"],
                timesteps=tensors.get("timesteps"),
                meta=meta,
            )
        except (ValueError, ConfigError) as err:
            raise FileFormatError(tensors_path, str(err)) from None

    @property
    def sae_fingerprint(self) -> str | None:
        """The fingerprint of the SAE these features were selected from (None: not recorded)."""
        value = self.meta.get(SAE_FINGERPRINT)
        return str(value) if value else None

    @classmethod
    def from_latents(
        cls,
        concept: str,
        latents: list[int],
        mean: list[float] | float = 1.0,
        threshold: list[float] | float = 0.0,
        meta: dict[str, Any] | None = None,
    ) -> ConceptFeatures:
        """Hand-picked latents, the same at every step (e.g. for a slider or a test)."""
        n = len(latents)
        as_row = lambda v: torch.tensor(v if isinstance(v, list) else [v] * n)  # noqa: E731
        return cls(
            concept=concept,
            indices=torch.tensor(latents, dtype=torch.long).reshape(1, n),
            mean=as_row(mean).reshape(1, n),
            threshold=as_row(threshold).reshape(1, n),
            meta=dict(meta or {}),
        )
