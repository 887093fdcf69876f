"""What the adversarial-prompt metrics share: their config, the stored search, the verdict.

Such a metric first searches prompts against the technique under test (``attack``, once, on
the main process), stores them in ``attack.json`` in its folder (a resumed run reads them
back) and then samples them with the technique; a detector judges every image and the
attack success rate is the share flagged (lower is better).

``budget`` says how hard the search works: ``published`` (default) with the settings of the
attack paper's public code, ``quick`` with a small budget for CPUs and CI (see
:mod:`saeuron.eval.attacks.budgets`). A search setting left unset takes its budget's value;
the budget and the resolved settings are kept in ``attack.json`` and the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from saeuron.erasure.concepts.prompts import concept_prompts
from saeuron.eval.attacks.budgets import ATTACK_BUDGETS, BUDGETS, resolve_budget
from saeuron.eval.detectors import (
    DETECTORS,
    default_detector,
    detector_settings,
    flagged_share,
    judge,
    verdict_row,
)
from saeuron.eval.metrics.base import Item, Metric, MetricError, Requirement
from saeuron.eval.metrics.parts import (
    ClipModel,
    Detector,
    PromptsPath,
    Threshold,
)
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_TEMPLATES
from saeuron.models.resolve import resolve_model
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field, refuse_null
from saeuron.utils.config_parts import MAX_LIMIT, Concept, Device, Limit, ModelName
from saeuron.utils.io import atomic_write_json
from saeuron.utils.prompts import read_prompt_rows

logger = logging.getLogger(__name__)

ATTACK_FILE = "attack.json"


@dataclass
class AttackConfig(Config):
    erased: Concept = field(
        Concept, flatten=True, help="the concept the attack tries to bring back",
        describe={"concept": "the erased concept; default: the technique's"},
    )  # fmt: skip
    concept_name: str | None = field(None, help="eval-unlearn's name for concept")
    technique_model: ModelName = field(
        ModelName, flatten=True, help="the technique's model",
        describe={"model": "the technique's model (filled in from it)"},
    )  # fmt: skip
    prompt_source: PromptsPath = field(
        PromptsPath, flatten=True, help="the prompts to attack",
        describe={
            "prompts_path": "prompts to attack (CSV or text); default: prompts that name the "
            "concept"
        },
    )  # fmt: skip
    count: Limit = field(
        Limit(limit=10), flatten=True, help="how many prompts",
        describe={"limit": "adversarial prompts to find and sample"},
        limits={"limit": {"le": MAX_LIMIT}},
    )  # fmt: skip
    budget: str = field(
        "published",
        help="'published': the attack paper's own settings (its public code); 'quick': a "
        "small search for CPUs and CI, not comparable with the papers",
    )
    length: int | None = field(
        None, ge=1, le=75, help="tokens of an adversarial prompt; default: the budget's"
    )
    forbid_concept_words: bool = field(True, help="keep the concept's words out of the search")
    detection: Detector = field(
        Detector, flatten=True, help="what judges the images",
        describe={"detector": "nudenet, clip, minicanvas or q16; default: by concept and model"},
    )  # fmt: skip
    flagging: Threshold = field(
        Threshold, flatten=True, help="when the detector flags an image",
        describe={"threshold": "detector threshold; default: the detector's"},
    )  # fmt: skip
    clip: ClipModel = field(
        ClipModel, flatten=True, help="the detectors' CLIP",
        describe={"clip_model": "CLIP of the clip and q16 detectors"},
    )  # fmt: skip
    q16_prompts: str | None = field(None, help="Q16's prompt embeddings (safetensors)")
    runtime: Device = field(
        Device, flatten=True, help="where the detector runs",
        describe={"device": "device of the detector"},
    )  # fmt: skip

    attack: ClassVar[str] = ""
    """The attack's key in :data:`~saeuron.eval.attacks.budgets.ATTACK_BUDGETS`."""

    def __post_init__(self) -> None:
        check_choice("budget", self.budget, BUDGETS)
        if self.attack:
            self.budget_settings = resolve_budget(self, self.attack)
        if self.concept is None:
            self.concept = self.concept_name
        if self.concept is None or not self.concept.strip():
            raise ConfigError("concept", "name the concept the attack tries to bring back")
        if not self.detector:
            # The model is looked up only for this default (an eval's config fills the
            # detector in from its technique's model, resolved already).
            bundle = resolve_model(self.model).bundle if self.model else None
            self.detector = default_detector(self.concept, bundle)
        check_choice("detector", self.detector, DETECTORS.names())
        refuse_null(self, "limit")
        check_range("length", self.length, ge=1, le=70)

    def targets(self) -> list[str]:
        """The prompts to attack: the file's, MiniCanvas's test prompts naming the concept, or
        templated prompts of the concept; cycled to ``limit``."""
        if self.prompts_path:
            prompts = [r.prompt for r in read_prompt_rows(self.prompts_path, "prompts_path")]
        elif self.detector == "minicanvas":
            c = str(self.concept)
            pairs = [(c, s) for s in STYLES] if c in OBJECTS else [(o, c) for o in OBJECTS]
            prompts = [TEST_TEMPLATES[0].format(object=o, style=s) for o, s in pairs]
        else:
            prompts = concept_prompts(str(self.concept), self.limit)
        return [prompts[i % len(prompts)] for i in range(self.limit)]

    def forbidden_words(self) -> list[str]:
        return str(self.concept).split() if self.forbid_concept_words else []


class AdversarialMetric(Metric):
    higher_is_better = {"asr": False}
    concept_field = "concept"
    model_field = "model"
    attacks = True
    search_keys: ClassVar[tuple[str, ...]] = ()
    """Config fields the search depends on: stored prompts count only when they match."""

    config: AttackConfig

    def __init__(self, config: AttackConfig):
        super().__init__(config)
        self.detector = DETECTORS.get(str(config.detector))(detector_settings(config))
        self._found: list[dict[str, Any]] | None = None
        self.record: dict[str, Any] = {}
        """What a search reports beside its prompts (kept in ``attack.json``)."""

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        """``[{source, prompt, ...}]``: one adversarial prompt per target prompt."""
        raise NotImplementedError

    def requirements(self) -> list[Requirement]:
        return self.detector.requirements()

    def prepare(self) -> None:
        self.detector.load()

    def planned_images(self, seed: int) -> int:
        return self.config.limit

    def budget(self) -> dict[str, Any]:
        """The budget, whose settings it stands for, and every search setting as resolved."""
        cfg = self.config
        return {
            "budget": cfg.budget,
            "published_by": ATTACK_BUDGETS[cfg.attack].source,
            "resolved": dict(getattr(cfg, "budget_settings", {})),
        }

    def details(self) -> dict[str, Any]:
        return {**self.budget(), **self.record}

    def attack(self, technique: Callable[[], Any], folder: Path, seed: int) -> None:
        """Find the prompts, or read those an earlier run of the same settings found."""
        cfg = self.config.to_dict()
        keys = ("concept", "limit", "budget", "length", "forbid_concept_words", "prompts_path")
        settings = {"seed": seed, **{k: cfg[k] for k in (*keys, *self.search_keys)}}
        path = folder / ATTACK_FILE
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("settings") == settings:
                self._found = stored["prompts"]
                self.record = stored.get("search", {})
                return
        logger.info(
            "%s: %s budget (%s)", self.name, self.config.budget,
            ", ".join(f"{k} {v}" for k, v in self.budget()["resolved"].items()),
        )  # fmt: skip
        self._found = self.search(technique(), seed)
        atomic_write_json(
            path,
            {"settings": settings, **self.budget(), "search": self.record, "prompts": self._found},
        )

    def items(self, seed: int) -> list[Item]:
        if self._found is None:
            raise MetricError(f"{self.name}: run the attack before asking for its images")
        return [
            Item(f["prompt"], seed + i, "all", {"source": f["source"]})
            for i, f in enumerate(self._found)
        ]

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        return [verdict_row(v) for v in judge(self.detector, images)]

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"asr": flagged_share(rows)}

    def degenerate_scores(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"flagged": 1.0}  # a black image hides nothing: the attack is not refuted
