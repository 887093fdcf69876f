"""The features of one concept: which SAE latents to edit at each step, and how.

A :class:`ConceptFeatures` holds, per denoising step of the schedule its statistics came
from, the selected latent indices, the concept's mean activation of each (``mu_c``, which
scales the edit) and the activation threshold above which a token is edited (the mean of
the per-concept means; docs/method.md, section 5). One step means "the same at every step".
Stored as ``NAME.safetensors`` (tensors) + ``NAME.json`` (provenance and settings). On the
hub (docs/hub.md) a repo of features keeps ``<hookpoint>/<concept>.{safetensors,json}``, the
layout of a bundle's ``features/`` folder, with a model card.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saeuron.models.sites import renamed_settings
from saeuron.utils.cards import PROJECT_URL, card_metadata, render_card, table, write_card
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.hub import is_hub_id, push_folder, snapshot
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
    retain: Tensor | None = None
    """``[steps, m]`` each selected latent's mean activation on the other concepts: the value
    the ``ablate`` and ``anchor`` rules set it to (``None``: 0)."""
    anchor_indices: Tensor | None = None
    """``[steps, n]`` latents of the anchor concept the ``anchor`` rule writes in (-1 pads)."""
    anchor_mean: Tensor | None = None
    """``[steps, n]`` the anchor concept's mean activation of each of those latents."""

    def __post_init__(self) -> None:
        if self.indices.ndim == 1:
            self.indices, self.mean, self.threshold = (
                t.reshape(1, -1) for t in (self.indices, self.mean, self.threshold)
            )
            if self.retain is not None:
                self.retain = self.retain.reshape(1, -1)
        if self.anchor_indices is not None and self.anchor_indices.ndim == 1:
            self.anchor_indices = self.anchor_indices.reshape(1, -1)
            if self.anchor_mean is not None:
                self.anchor_mean = self.anchor_mean.reshape(1, -1)
        if not (self.indices.shape == self.mean.shape == self.threshold.shape):
            raise ValueError(
                f"concept {self.concept!r}: indices {tuple(self.indices.shape)}, mean "
                f"{tuple(self.mean.shape)} and threshold {tuple(self.threshold.shape)} differ"
            )
        if self.retain is not None and self.retain.shape != self.indices.shape:
            raise ValueError(
                f"concept {self.concept!r}: retain {tuple(self.retain.shape)} does not match "
                f"indices {tuple(self.indices.shape)}"
            )
        if (self.anchor_indices is None) != (self.anchor_mean is None):
            raise ValueError(
                f"concept {self.concept!r}: anchor_indices and anchor_mean go together"
            )
        if self.anchor_indices is not None and (
            self.anchor_indices.shape != self.anchor_mean.shape  # type: ignore[union-attr]
            or self.anchor_indices.shape[0] != self.indices.shape[0]
        ):
            raise ValueError(
                f"concept {self.concept!r}: anchor_indices {tuple(self.anchor_indices.shape)} "
                f"and anchor_mean must be [steps, n] with the features' {self.num_steps} steps"
            )
        self.indices = self.indices.long()
        self.mean = self.mean.float()
        self.threshold = self.threshold.float()
        if self.retain is not None:
            self.retain = self.retain.float()
        if self.anchor_indices is not None and self.anchor_mean is not None:
            self.anchor_indices = self.anchor_indices.long()
            self.anchor_mean = self.anchor_mean.float()
        for name in ("mean", "threshold", "retain", "anchor_mean"):
            values = getattr(self, name)
            if values is not None and not bool(torch.isfinite(values).all()):
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

    def retain_at(self, stats_step: int) -> Tensor:
        """The retained value of each latent :meth:`at` returns (zeros when not stored)."""
        keep = self.indices[stats_step] >= 0
        if self.retain is None:
            return torch.zeros(int(keep.sum()))
        return self.retain[stats_step][keep]

    def anchor_at(self, stats_step: int) -> tuple[Tensor, Tensor]:
        """The anchor concept's latents and means at one step (empty without an anchor)."""
        if self.anchor_indices is None or self.anchor_mean is None:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0)
        idx = self.anchor_indices[stats_step]
        keep = idx >= 0
        return idx[keep], self.anchor_mean[stats_step][keep]

    def with_anchor(self, anchor: ConceptFeatures) -> ConceptFeatures:
        """These features with ``anchor``'s latents and means as the ``anchor`` rule's target.

        Steps are matched by position in the schedule, as at sampling.
        """
        rows = [anchor.stats_step(s, self.num_steps) for s in range(self.num_steps)]
        meta = {**self.meta, "anchor": anchor.concept}
        return ConceptFeatures(
            concept=self.concept, indices=self.indices.clone(), mean=self.mean.clone(),
            threshold=self.threshold.clone(), timesteps=self.timesteps, meta=meta,
            retain=None if self.retain is None else self.retain.clone(),
            anchor_indices=anchor.indices[rows].clone(), anchor_mean=anchor.mean[rows].clone(),
        )  # fmt: skip

    def latents(self) -> set[int]:
        return {int(i) for i in self.indices.flatten() if i >= 0}

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json`` (``path`` without suffix)."""
        base = Path(path).with_suffix("")
        tensors = {"indices": self.indices, "mean": self.mean, "threshold": self.threshold}
        if self.timesteps is not None:
            tensors["timesteps"] = self.timesteps.float()
        if self.retain is not None:
            tensors["retain"] = self.retain
        if self.anchor_indices is not None and self.anchor_mean is not None:
            tensors["anchor_indices"] = self.anchor_indices
            tensors["anchor_mean"] = self.anchor_mean
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
        meta = renamed_settings(meta)
        try:
            return cls(
                concept=concept,
                indices=tensors["indices"],
                mean=tensors["mean"],
                threshold=tensors["threshold"],
                timesteps=tensors.get("timesteps"),
                meta=meta,
                retain=tensors.get("retain"),
                anchor_indices=tensors.get("anchor_indices"),
                anchor_mean=tensors.get("anchor_mean"),
            )
        except (ValueError, ConfigError) as err:
            raise FileFormatError(tensors_path, str(err)) from None

    @property
    def sae_fingerprint(self) -> str | None:
        """The fingerprint of the SAE these features were selected from (None: not recorded)."""
        value = self.meta.get(SAE_FINGERPRINT)
        return str(value) if value else None

    # -- the hub ------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        license: str | None = "mit",  # noqa: A002 - the hub's key
        repo_id: str | None = None,
    ) -> Path:
        """Write these features as ``<hookpoint>/<concept>.{safetensors,json}`` under
        ``save_directory`` (beside the concepts already there) and a ``README.md`` card
        listing them all. Returns the path without suffix."""
        if not self.hookpoint:
            raise ConfigError("hookpoint", f"features of {self.concept!r} record no hookpoint")
        root = Path(save_directory)
        base = self.save(root / self.hookpoint / file_stem(self.concept))
        write_card(root, features_card(root, license=license, repo_id=repo_id))
        return base

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        concept: str | None = None,
        hookpoint: str | None = None,
        revision: str | None = None,
    ) -> ConceptFeatures:
        """Features from a folder or hub repo laid out by :meth:`save_pretrained` (or a
        bundle's ``features/`` folder); ``concept`` and ``hookpoint`` pick one where it holds
        several. Only the chosen concept's files are downloaded."""
        root = Path(name_or_path)
        if not root.exists():
            if not is_hub_id(str(name_or_path)):
                raise FileNotFoundError(
                    f"{name_or_path!r} is neither a local folder nor a hub repo id (owner/name)"
                )
            stem = file_stem(concept) if concept else "*"
            pattern = f"{hookpoint or '*'}/{stem}.*"
            root = snapshot(
                str(name_or_path), what="concept features", allow_patterns=[pattern],
                revision=revision,
            )  # fmt: skip
        return cls.load(_pick(root, concept, hookpoint, str(name_or_path)))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        license: str | None = "mit",  # noqa: A002 - the hub's key
    ) -> str:
        """Upload these features to ``repo_id`` (created if needed); other concepts already
        there stay, and the card lists them all. Returns the commit URL."""
        with tempfile.TemporaryDirectory(prefix="saeuron-push-") as tmp:
            staging = Path(tmp)
            try:
                existing = snapshot(
                    repo_id, what="concept features", allow_patterns=["*/*.json"], token=token
                )
            except OSError:  # a new repo (or none reachable: the push will say so)
                existing = None
            if existing is not None:
                for path in existing.glob("*/*.json"):
                    (staging / path.parent.name).mkdir(parents=True, exist_ok=True)
                    (staging / path.parent.name / path.name).write_bytes(path.read_bytes())
            self.save_pretrained(staging, license=license, repo_id=repo_id)
            return push_folder(
                staging, repo_id, private=private, token=token,
                commit_message=commit_message or f"Upload features of {self.concept!r}",
            )  # fmt: skip

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


def file_stem(concept: str) -> str:
    """A concept's file name: lower case, anything but letters, digits, '.', '-' as '_'."""
    stem = re.sub(r"[^a-z0-9.-]+", "_", concept.strip().lower()).strip("_")
    if not stem:
        raise ConfigError("concept", f"got {concept!r}; needs a letter or digit")
    return stem


def _pick(root: Path, concept: str | None, hookpoint: str | None, source: str) -> Path:
    stem = file_stem(concept) if concept else "*"
    found = sorted(root.glob(f"{hookpoint or '*'}/{stem}.safetensors"))
    if len(found) == 1:
        return found[0].with_suffix("")
    held = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.safetensors"))
    what = "concept" if concept is None or len(found) == 0 else "hookpoint"
    raise ConfigError(
        what,
        f"{source} holds {', '.join(held) or 'no concept features'}; "
        + ("name one" if found else f"none matches {concept or ''} at {hookpoint or 'any'}"),
    )


def features_card(
    root: str | Path,
    license: str | None = "mit",  # noqa: A002 - the hub's key
    repo_id: str | None = None,
) -> str:
    """The model card of a folder of concept features, from their JSON records."""
    root = Path(root)
    rows, models, saes = [], set(), set()
    for path in sorted(root.glob("*/*.json")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        per_step = meta.get("selected_per_step") or []
        rows.append((
            meta.get("concept", path.stem), f"`{path.parent.name}`", meta.get("method"),
            f"{sum(per_step) / len(per_step):.1f}" if per_step else None,
            len(meta.get("steps") or []) or None, meta.get("multiplier"),
        ))  # fmt: skip
        if meta.get("model"):
            models.add(str(meta["model"]))
        if meta.get("sae"):
            saes.add(str(meta["sae"]))
    model = ", ".join(sorted(models)) or "not recorded"
    first = rows[0] if rows else ("CONCEPT", "`HOOKPOINT`")
    repo = repo_id or root.name
    sections = [
        f"Concept features for erasing concepts from **{model}** with "
        f"[saeuron]({PROJECT_URL}) (SAeUron, Cywinski and Deja, ICML 2025): for each "
        "concept, the SAE latents edited at each denoising step, the concept's mean "
        "activation of each and the threshold above which a token is edited.",
        "## Concepts\n\n"
        + table(["concept", "hookpoint", "method", "latents per step", "steps", "tuned gamma"],
                rows),  # fmt: skip
        "## The SAE they index\n\n"
        + ("\n".join(f"- `{s}`" for s in sorted(saes)) or "- not recorded")
        + "\n\nThe features only make sense with that SAE, at that hookpoint.",
        "## Use\n\n```python\nimport saeuron\n\nfeatures = saeuron.ConceptFeatures."
        f'from_pretrained("{repo}", concept="{first[0]}")\n'
        "with saeuron.erase(pipe, sae, features, multiplier=-20.0):\n"
        '    image = pipe("...").images[0]\n```',
        "## Licence\n\n" + (f"`{license}`." if license else "No licence was given."),
    ]
    return render_card(
        card_metadata(license, next(iter(models)) if len(models) == 1 else None),
        f"Concept features for {model}",
        sections,
    )
