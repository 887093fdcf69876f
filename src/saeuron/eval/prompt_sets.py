"""Prompt sets: the validation prompts a tuner judges an erasure on, as one JSON file.

A prompt set names *kinds* of concepts (``object``, ``style``, ...) and their members,
templates with one ``{kind}`` placeholder per kind, and seeds. Erasing concept ``c`` of kind
``k``, the *target* prompts are every template filled with ``c`` and every member of the
other kinds, at every seed; the *retained* prompts fill ``k`` with another member, at the
first ``retain_seeds`` seeds, one combination in ``retain_every`` (chosen so that every
member stays in). ``aliases`` give other names of a concept: its target prompts are repeated
with each, so that an erasure of the word alone does not pass. ``prefixes`` add copies of
each prompt behind other words (a concept word in another context, as an attacker's prefix
puts it). ``forbidden`` lists what is for testing only (seeds, templates, names): a tuner
refuses a prompt set, a concept or a setting that uses any of it.

Example::

    {"kinds": {"object": ["cat", "dog"], "style": ["sketch", "photo"]},
     "templates": ["a {style} of a {object}"], "seeds": [1, 2],
     "forbidden": {"seeds": [188], "templates": ["an image of {object} in {style} style."]}}
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from saeuron.sae.formats import read_json_object
from saeuron.utils.errors import ConfigError
from saeuron.utils.io import atomic_write_json

PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Forbidden(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(default_factory=list)
    templates: list[str] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    """Test-only names of concepts (other names for them): no tuning prompt may hold one."""


class PromptSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "prompts"
    kinds: dict[str, list[str]] = Field(min_length=1)
    templates: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    retain_seeds: int = Field(1, ge=1)
    retain_every: int = Field(3, ge=1)
    prefixes: list[str] = Field(default_factory=list)
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    """Other names of a member, by member: its target prompts are repeated with each."""
    heldout_templates: list[str] = Field(default_factory=list)
    """Phrasings never tuned on: the tuner scores its winner on them, for the record."""
    forbidden: Forbidden = Field(default_factory=Forbidden)

    @model_validator(mode="after")
    def _consistent(self) -> PromptSet:
        for kind, members in self.kinds.items():
            if not members or len(set(members)) != len(members):
                raise ValueError(f"kinds.{kind}: give distinct members")
        for template in (*self.templates, *self.heldout_templates):
            used = set(PLACEHOLDER.findall(template))
            if used != set(self.kinds):
                raise ValueError(
                    f"template {template!r} fills {sorted(used)}; each template fills every "
                    f"kind: {sorted(self.kinds)}"
                )
        members = {m for ms in self.kinds.values() for m in ms}
        unknown = sorted(set(self.aliases) - members)
        if unknown:
            raise ValueError(f"aliases: {unknown} are not members of any kind")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds: got {self.seeds}; give distinct whole numbers >= 0")
        if self.retain_seeds > len(self.seeds):
            raise ValueError(f"retain_seeds: {self.retain_seeds} > {len(self.seeds)} seeds")
        return self

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = "prompt set") -> PromptSet:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "prompt_set"
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ConfigError(f"prompt_set.{where}", f"{message} (in {source})") from None

    @classmethod
    def load(cls, path: str | Path) -> PromptSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt set: no file {path}")
        return cls.from_dict(read_json_object(path), str(path))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.model_dump(mode="json"))

    # -- what a concept is judged on -----------------------------------------------------------

    def kind_of(self, concept: str) -> str:
        for kind, members in self.kinds.items():
            if concept in members:
                return kind
        known = ", ".join(m for ms in self.kinds.values() for m in ms)
        raise ConfigError("concept", f"got {concept!r}; the prompt set holds {known}")

    def check_tunable(self, concepts: list[str] | None = None) -> None:
        """Refuse test-only seeds, templates and names: a tuner never sees them."""
        bad_seeds = sorted(set(self.seeds) & set(self.forbidden.seeds))
        if bad_seeds:
            raise ConfigError(
                "prompt_set.seeds", f"{bad_seeds} are test seeds; tuning never uses them"
            )
        normalized = {t.strip().lower() for t in self.forbidden.templates}
        bad_templates = [t for t in self.templates if t.strip().lower() in normalized]
        if bad_templates:
            raise ConfigError(
                "prompt_set.templates",
                f"{bad_templates} are test phrasings; tuning never uses them",
            )
        names = [n.lower() for n in self.forbidden.names]
        words = [*self.templates, *self.prefixes, *(concepts or []),
                 *(m for ms in self.kinds.values() for m in ms),
                 *(a for aliases in self.aliases.values() for a in aliases)]  # fmt: skip
        for text in words:
            hit = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", text.lower())), None)
            if hit:
                raise ConfigError(
                    "concept" if concepts and text in concepts else "prompt_set",
                    f"{text!r} holds {hit!r}, a test-only name; tuning never uses it",
                )

    def rows(
        self, concept: str, templates: list[str] | None = None
    ) -> tuple[list[PromptRow], list[PromptRow]]:
        """The target and the retained prompts of ``concept`` (see the module's doc)."""
        kind = self.kind_of(concept)
        kinds = list(self.kinds)
        target: list[PromptRow] = []
        retain: list[PromptRow] = []
        for template in templates or self.templates:
            for combo in itertools.product(*(enumerate(self.kinds[k]) for k in kinds)):
                labels = {k: m for k, (_, m) in zip(kinds, combo)}
                hit = labels[kind] == concept
                if not hit and sum(i for i, _ in combo) % self.retain_every:
                    continue
                seeds = self.seeds if hit else self.seeds[: self.retain_seeds]
                names = [concept, *self.aliases.get(concept, [])] if hit else [labels[kind]]
                for name in names:
                    prompt = template.format(**{**labels, kind: name})
                    for prefix in ["", *self.prefixes]:
                        text = f"{prefix} {prompt}".strip()
                        for seed in seeds:
                            (target if hit else retain).append(PromptRow(text, labels, seed))
        return target, retain


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    labels: dict[str, str]
    """The member of each kind the prompt asks for."""
    seed: int
