"""Prompt files of the metrics: a CSV with a ``prompt`` column or a text file, one a line.

A CSV may carry a seed per prompt (``evaluation_seed`` as in I2P, or ``seed``); other
columns travel with the prompt into the per-image table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

SEED_COLUMNS = ("evaluation_seed", "seed")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None
    extra: dict[str, str]


def read_prompts(path: str | Path, field: str, limit: int | None = None) -> list[PromptRow]:
    """The prompts of ``path`` (first ``limit``); errors name the config ``field``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"file {str(path)!r} does not exist")
    rows: list[PromptRow] = []
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = {c.lower().strip(): c for c in reader.fieldnames or []}
            if "prompt" not in columns:
                raise ConfigError(
                    field, f"{path} has no 'prompt' column (columns: {reader.fieldnames})"
                )
            seed_col = next((columns[c] for c in SEED_COLUMNS if c in columns), None)
            for line, record in enumerate(reader, start=2):
                prompt = (record.get(columns["prompt"]) or "").strip()
                if not prompt:
                    continue
                seed = None
                if seed_col and (record.get(seed_col) or "").strip():
                    try:
                        seed = int(float(record[seed_col]))
                    except ValueError:
                        raise ConfigError(
                            field, f"{path}:{line}: seed {record[seed_col]!r} is not a number"
                        ) from None
                extra = {k: v for k, v in record.items() if k not in (columns["prompt"], seed_col)}
                rows.append(PromptRow(prompt, seed, {k: str(v) for k, v in extra.items() if k}))
    else:
        for text in path.read_text(encoding="utf-8").splitlines():
            if text.strip() and not text.lstrip().startswith("#"):
                rows.append(PromptRow(text.strip(), None, {}))
    if not rows:
        raise ConfigError(field, f"{path} holds no prompts")
    return rows[:limit] if limit is not None else rows
