"""The one prompt reader: a CSV with a ``prompt`` column, or a text file with one a line.

- ``.csv``: the ``prompt`` column (any case); an optional seed column (``evaluation_seed`` as
  in I2P, or ``seed``) gives a prompt its own seed; other columns travel with the prompt.
- anything else: one prompt a line; blank lines and lines starting with ``#`` are skipped.

Files are UTF-8 (a byte-order mark is allowed). Every error names the setting the file came
from, so the message says which input to fix.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from saeuron.utils.errors import ConfigError
from saeuron.utils.files import NEUTRAL_PROMPTS
from saeuron.utils.text import read_text

SEED_COLUMNS = ("evaluation_seed", "seed")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def read_prompt_rows(
    path: str | Path,
    setting: str = "prompts",
    limit: int | None = None,
    keep_empty: bool = False,
) -> list[PromptRow]:
    """The prompts of ``path`` (the first ``limit``).

    ``keep_empty`` keeps CSV rows whose prompt is empty, so that a prompt's index is its row
    (captures and their label files rely on that); otherwise such rows are skipped.
    """
    path = Path(path)
    text = read_text(path, setting)
    rows: list[PromptRow] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = {c.lower().strip(): c for c in reader.fieldnames or [] if c is not None}
        if "prompt" not in columns:
            raise ConfigError(
                setting,
                f"{path} has no 'prompt' column (columns: {', '.join(reader.fieldnames or [])})",
            )
        seed_col = next((columns[c] for c in SEED_COLUMNS if c in columns), None)
        for line, record in enumerate(reader, start=2):
            prompt = (record.get(columns["prompt"]) or "").strip()
            if not prompt and not keep_empty:
                continue
            seed = None
            if seed_col and (record.get(seed_col) or "").strip():
                try:
                    seed = int(float(record[seed_col]))
                except ValueError:
                    raise ConfigError(
                        setting, f"{path}:{line}: seed {record[seed_col]!r} is not a number"
                    ) from None
            extra = {
                str(k): str(v)
                for k, v in record.items()
                if k and k not in (columns["prompt"], seed_col)
            }
            rows.append(PromptRow(prompt, seed, extra))
    else:
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append(PromptRow(line.strip()))
    if not any(row.prompt for row in rows):
        raise ConfigError(setting, f"{path} holds no prompts")
    return rows[:limit] if limit is not None else rows


def read_prompts(
    path: str | Path, setting: str = "prompts", limit: int | None = None, keep_empty: bool = False
) -> list[str]:
    """Just the prompt texts of :func:`read_prompt_rows`."""
    return [row.prompt for row in read_prompt_rows(path, setting, limit, keep_empty)]


def neutral_prompts() -> list[str]:
    """The bundled neutral everyday prompts (scenes, objects, landscapes)."""
    return read_prompts(NEUTRAL_PROMPTS, "neutral prompts")
