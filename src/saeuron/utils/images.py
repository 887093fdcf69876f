"""Labelled image grids: the before/after pictures of the demo and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from saeuron.utils.io import atomic_path


def save_grid(
    rows: Sequence[tuple[str, Sequence[Any]]],
    path: str | Path,
    cell: int = 64,
    gap: int = 4,
    label_width: int = 150,
) -> Path:
    """One row per ``(label, images)``, each image scaled to ``cell`` px, written atomically.

    Nearest-neighbour scaling shows small images pixel for pixel, as the model drew them.
    """
    n = max((len(images) for _, images in rows), default=0)
    grid = Image.new(
        "RGB", (label_width + n * (cell + gap), len(rows) * (cell + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        y = r * (cell + gap) + gap
        draw.text((6, y + cell // 2 - 12), label, fill="black")
        for i, image in enumerate(images):
            scaled = image.resize((cell, cell), Image.NEAREST)
            grid.paste(scaled, (label_width + i * (cell + gap), y))
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def before_after_rows(
    panels: Sequence[tuple[str, Sequence[Any], Sequence[Any]]],
    tags: tuple[str, str] = ("original", "erased"),
) -> list[tuple[str, Sequence[Any]]]:
    """``(title, before, after)`` panels -> two labelled rows each."""
    rows: list[tuple[str, Sequence[Any]]] = []
    for title, before, after in panels:
        rows += [(f"{title}\n{tags[0]}", before), (f"{title}\n{tags[1]}", after)]
    return rows
