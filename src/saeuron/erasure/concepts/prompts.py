"""Prompt sets of a concept's statistics: templated prompts, other concepts' sets."""

from __future__ import annotations

import json
from pathlib import Path

from saeuron.utils.errors import ConfigError
from saeuron.utils.prompts import neutral_prompts, read_prompts
from saeuron.utils.text import read_text

NEUTRAL = "neutral"
"""Name of the bundled neutral prompt set, usable as ``others``."""

CONCEPT_TEMPLATES = (
    "a photo of {c}",
    "an image of {c}",
    "{c}",
    "a picture of {c}",
    "a close-up photo of {c}",
    "a high-quality photo of {c}",
    "a painting of {c}",
    "a drawing of {c}",
    "a detailed illustration of {c}",
    "a sketch of {c}",
    "a rendering of {c}",
    "an artwork showing {c}",
    "a photograph featuring {c}",
    "a bright photo of {c}",
    "a dark photo of {c}",
    "a cropped photo of {c}",
    "a blurry photo of {c}",
    "a photo of {c} outdoors",
    "a photo of {c} indoors",
    "a wide shot of {c}",
    "{c} in the afternoon light",
)


def concept_prompts(concept: str, n: int = 20) -> list[str]:
    """``n`` prompts naming ``concept`` from :data:`CONCEPT_TEMPLATES`, cycled when ``n`` is larger.

    Repeated templates still give different images: every prompt gets its own seed.
    """
    if n < 1:
        raise ValueError(f"n: got {n}; must be >= 1")
    return [CONCEPT_TEMPLATES[i % len(CONCEPT_TEMPLATES)].format(c=concept) for i in range(n)]


def read_other_concepts(path: str | Path) -> dict[str, list[str]]:
    """Prompt sets of the other concepts: ``NAME`` -> prompts.

    A ``.json`` file maps concept names to prompt lists (each a concept of its own, as the
    paper's other styles/objects); any other file is one prompt a line, one concept.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text(path, "others"))
        except json.JSONDecodeError as err:
            raise ConfigError("others", f"{path} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in data.values()
        ):
            raise ConfigError(
                "others", f"{path} must map concept names to non-empty lists of prompts"
            )
        return {str(k): list(v) for k, v in data.items()}
    return {f"others:{path.stem}": read_prompts(path, "others")}


def other_prompt_sets(others: str | None, concept: str) -> dict[str, list[str]]:
    """The prompt sets ``others`` names (``neutral``, a file), without ``concept`` itself."""
    source = others if others is not None else NEUTRAL
    sets = {NEUTRAL: neutral_prompts()} if source == NEUTRAL else read_other_concepts(source)
    # The target is never one of its own "other concepts".
    sets.pop(concept, None)
    if not sets:
        raise ConfigError("others", f"{source} holds no concept other than {concept!r}")
    return sets
