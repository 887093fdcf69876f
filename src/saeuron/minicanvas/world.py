"""The MiniCanvas world: procedural 32x32 images of objects drawn in styles.

Ten objects (silhouettes) x ten styles (palette + texture), with random position, size and
background, deterministic from a seed. Captions follow UnlearnCanvas: "An image of
{object} in {style} style." and "An image of {object}.". Prompt sets are kept apart as the
paper does: anchor prompts (varied phrasings) for SAE training and concept statistics,
validation prompts for tuning, test prompts for reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIZE = 32

OBJECTS = (
    "circle", "square", "triangle", "star", "cross",
    "heart", "moon", "arrow", "house", "ring",
)  # fmt: skip
STYLES = (
    "striped", "dotted", "checkered", "outlined", "gradient",
    "diagonal", "neon", "pastel", "grainy", "blueprint",
)  # fmt: skip

TEST_TEMPLATES = ("An image of {object} in {style} style.",)
UNSTYLED_TEMPLATES = ("An image of {object}.",)
# Phrasings the model is trained on beside the test one; anchors draw from these.
ANCHOR_TEMPLATES = (
    "A {style} picture of a {object}.",
    "A drawing of a {object} in {style} style.",
    "{object} rendered in {style} style",
    "A {object}, {style} style.",
    "An illustration of a {object} in the {style} style.",
    "A {style} {object}.",
)
UNSTYLED_ANCHORS = ("A picture of a {object}.", "A drawing of a {object}.", "a {object}")
TEST_SEEDS = (188, 288, 588, 688)
VALIDATION_SEEDS = (11, 22)
# Twice the images per trial: with 20 target images, a guided setting picked on two seeds
# lost up to 0.37 UA on the test seeds (moon, checkered); on 40 the gap closes.
WIDE_VALIDATION_SEEDS = (11, 22, 33, 44)


# -- silhouettes: u, v are coordinates relative to the object centre, in units of its size --


def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.hypot(u, v), np.arctan2(v, u)


def _circle(u, v):
    return u**2 + v**2 <= 1.0


def _square(u, v):
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)


def _triangle(u, v):
    return (v <= 0.8) & (np.abs(u) <= (v + 0.95) * 0.55)


def _star(u, v):
    r, theta = _polar(u, v)
    # Five points, the top one upright.
    return r <= 0.5 + 0.5 * np.abs(np.cos(2.5 * (theta + np.pi / 2))) ** 3


def _cross(u, v):
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))


def _heart(u, v):
    x, y = u * 1.25, -v * 1.25 + 0.25
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def _moon(u, v):
    return (u**2 + v**2 <= 1.0) & ((u - 0.5) ** 2 + (v + 0.15) ** 2 > 0.72)


def _arrow(u, v):
    shaft = (np.abs(v) <= 0.22) & (u >= -0.95) & (u <= 0.15)
    head = (u >= 0.05) & (u <= 0.95) & (np.abs(v) <= (0.95 - u) * 0.85)
    return shaft | head


def _house(u, v):
    body = (np.abs(u) <= 0.7) & (v >= -0.1) & (v <= 0.9)
    roof = (v < -0.1) & (v >= -0.95) & (np.abs(u) <= (v + 0.95) * 1.05)
    return body | roof


def _ring(u, v):
    r = np.hypot(u, v)
    return (r <= 1.0) & (r >= 0.55)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "heart": _heart,
    "moon": _moon,
    "arrow": _arrow,
    "house": _house,
    "ring": _ring,
}


# -- styles: a palette and a texture, painted over a background ----------------------------


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask that touch a pixel outside it (a 1-px outline)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def _thick_edge(mask: np.ndarray) -> np.ndarray:
    edge = _edge(mask)
    return edge | _edge(mask & ~edge)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> np.ndarray:
    return np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _light_background(rng: np.random.Generator) -> np.ndarray:
    """A random pale background with a gentle random gradient."""
    top = rng.integers(170, 256, 3)
    bottom = np.clip(top + rng.integers(-40, 41, 3), 150, 255)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    return (top * (1 - t) + bottom * t) * np.ones((SIZE, SIZE, 1))


def render(obj: str, style: str, rng: np.random.Generator) -> np.ndarray:
    """One ``SIZE x SIZE x 3`` uint8 image of ``obj`` in ``style``."""
    size = rng.uniform(8.5, 13.0)
    cx, cy = rng.uniform(size + 1, SIZE - size - 1, 2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    mask = SHAPES[obj]((xx - cx) / size, (yy - cy) / size)
    ix, iy = np.mgrid[0:SIZE, 0:SIZE][::-1]
    phase = rng.integers(0, 4)
    img = _light_background(rng)

    if style == "striped":
        stripes = ((iy + phase) // 2) % 2 == 0
        img[mask & stripes] = _jitter(rng, (215, 35, 35), 20)
        img[mask & ~stripes] = _jitter(rng, (250, 235, 235), 8)
    elif style == "dotted":
        img[mask] = _jitter(rng, (25, 35, 120), 15)
        dots = (((ix + phase) % 4) == 1) & (((iy + phase) % 4) == 1)
        img[mask & dots] = _jitter(rng, (255, 220, 40), 15)
    elif style == "checkered":
        cells = (((ix + phase) // 3) + ((iy + phase) // 3)) % 2 == 0
        img[mask & cells] = _jitter(rng, (20, 20, 20), 10)
        img[mask & ~cells] = _jitter(rng, (245, 245, 245), 8)
    elif style == "outlined":
        img[_thick_edge(mask)] = _jitter(rng, (20, 110, 40), 20)
    elif style == "gradient":
        t = ((yy - (cy - size)) / (2 * size)).clip(0, 1)[..., None]
        top, bottom = _jitter(rng, (255, 150, 20), 15), _jitter(rng, (120, 20, 160), 15)
        img = np.where(mask[..., None], top * (1 - t) + bottom * t, img)
    elif style == "diagonal":
        bands = ((ix + iy + phase) // 2) % 2 == 0
        img[mask & bands] = _jitter(rng, (0, 140, 140), 15)
        img[mask & ~bands] = _jitter(rng, (225, 250, 245), 8)
    elif style == "neon":
        img = np.broadcast_to(rng.integers(0, 30, 3), (SIZE, SIZE, 3)).astype(np.float64).copy()
        edge = _thick_edge(mask)
        img[mask & ~edge] = _jitter(rng, (60, 0, 70), 10)
        img[edge] = _jitter(rng, (255, 40, 230), 15)
    elif style == "pastel":
        img = np.broadcast_to(_jitter(rng, (200, 240, 225), 12), (SIZE, SIZE, 3)).astype(float)
        img = img.copy()
        img[mask] = _jitter(rng, (250, 175, 200), 10)
    elif style == "grainy":
        base = _jitter(rng, (130, 85, 45), 15)
        grain = rng.normal(0, 38, (SIZE, SIZE, 1))
        img = np.where(mask[..., None], base + grain, img)
    elif style == "blueprint":
        img = np.broadcast_to(_jitter(rng, (25, 70, 160), 12), (SIZE, SIZE, 3)).astype(float)
        img = img.copy()
        grid = ((ix + phase) % 8 == 0) | ((iy + phase) % 8 == 0)
        img[grid] = img[grid] * 0.6 + 255 * 0.4
        img[_edge(mask)] = _jitter(rng, (245, 250, 255), 8)
    else:
        raise ValueError(f"unknown style {style!r}; allowed: {', '.join(STYLES)}")
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray
    obj: int
    style: int


def sample_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images with balanced labels: ``(images [n,32,32,3] uint8, objects, styles)``."""
    rng = np.random.default_rng(seed)
    pairs = np.arange(n) % (len(OBJECTS) * len(STYLES))
    rng.shuffle(pairs)
    objects, styles = pairs // len(STYLES), pairs % len(STYLES)
    images = np.stack(
        [render(OBJECTS[o], STYLES[s], rng) for o, s in zip(objects, styles, strict=True)]
    )
    return images, objects, styles


def caption(obj: str, style: str | None, template: str) -> str:
    return template.format(object=obj, style=style) if style else template.format(object=obj)


def evaluation_prompts() -> list[tuple[str, int, int | None]]:
    """``(prompt, object, style or None)``: every pair, and every object unstyled."""
    rows = [
        (caption(o, s, TEST_TEMPLATES[0]), i, j)
        for i, o in enumerate(OBJECTS)
        for j, s in enumerate(STYLES)
    ]
    return rows + [
        (caption(o, None, UNSTYLED_TEMPLATES[0]), i, None) for i, o in enumerate(OBJECTS)
    ]


def anchor_prompts(per_pair: int = 2) -> list[tuple[str, int, int | None]]:
    """Varied phrasings of every pair (and unstyled objects), for SAEs and statistics."""
    rows = []
    for i, o in enumerate(OBJECTS):
        for j, s in enumerate(STYLES):
            for k in range(per_pair):
                template = ANCHOR_TEMPLATES[(i + j + k * 3) % len(ANCHOR_TEMPLATES)]
                rows.append((caption(o, s, template), i, j))
        for template in UNSTYLED_ANCHORS:
            rows.append((caption(o, None, template), i, None))
    return rows


def training_caption(obj: int, style: int, rng: np.random.Generator) -> str:
    """A caption for a training image: mostly styled, in any known phrasing."""
    o, s = OBJECTS[obj], STYLES[style]
    roll = rng.random()
    if roll < 0.15:
        templates = UNSTYLED_TEMPLATES + UNSTYLED_ANCHORS
        return caption(o, None, templates[rng.integers(len(templates))])
    templates = TEST_TEMPLATES * 3 + ANCHOR_TEMPLATES
    return caption(o, s, templates[rng.integers(len(templates))])
