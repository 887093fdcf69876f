from __future__ import annotations

import numpy as np
from PIL import Image

from saeuron.utils.images import before_after_rows, save_grid


def test_grid_places_each_image_pixel_for_pixel(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    images = [Image.fromarray(a) for a in arrays]
    rows = before_after_rows([("erase 'star'", images[:3], images[3:])])
    assert [label for label, _ in rows] == ["erase 'star'\noriginal", "erase 'star'\nerased"]
    path = save_grid(rows, tmp_path / "grid.png", cell=64, gap=4, label_width=100)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 68 + 4, 100 + 3 * 68, 3)
    # Second row, third image: a 2x nearest-neighbour copy of arrays[5].
    cell = grid[72:136, 100 + 2 * 68 : 100 + 2 * 68 + 64]
    assert np.array_equal(cell, arrays[5].repeat(2, axis=0).repeat(2, axis=1))
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
