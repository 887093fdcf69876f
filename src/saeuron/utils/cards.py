"""Model cards: the README.md a Hugging Face repo shows, with its YAML metadata block.

The hub reads the block between the ``---`` lines (licence, base model, tags, library) to
file the repo; the rest is Markdown for people. Cards are generated from what the files
themselves record, so a card never says what its weights do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from saeuron.utils.io import atomic_write

CARD = "README.md"
LIBRARY = "saeuron"
TAGS = ("saeuron", "sparse-autoencoder", "concept-erasure", "diffusion")
PROJECT_URL = "https://github.com/saeuron/saeuron"


def render_card(metadata: Mapping[str, Any], title: str, sections: Sequence[str]) -> str:
    """``---`` YAML metadata ``---``, a title and Markdown sections (None values dropped)."""
    meta = {k: v for k, v in metadata.items() if v is not None}
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    body = "\n\n".join(s.strip() for s in sections if s and s.strip())
    return f"---\n{head}\n---\n\n# {title}\n\n{body}\n"


def card_metadata(
    license: str | None,  # noqa: A002 - the hub's key
    base_model: str | None = None,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "library_name": LIBRARY,
        "license": license,
        "base_model": base_model if base_model and "/" in base_model else None,
        "tags": [*TAGS, *tags],
    }


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML block of a card ({} when there is none)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    data = yaml.safe_load(text[4:end]) if end > 0 else None
    return data if isinstance(data, dict) else {}


def write_card(folder: str | Path, text: str) -> Path:
    path = Path(folder) / CARD
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
