"""The MiniCanvas world: procedural 32x32 images of objects drawn in styles.

Ten objects (silhouettes) x ten styles (palette + texture), with random position, size and
background, deterministic from a seed; one object per image, or two side by side in a scene.
Every concept has three names (canonical, validation, test-only). Captions follow
UnlearnCanvas: "An image of {object} in {style} style." and "An image of {object}.". Prompt
sets are kept apart as the paper does: anchor prompts (varied phrasings) for SAE training
and concept statistics, validation prompts for tuning, test prompts for reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from saeuron.utils.errors import ConfigError

SIZE = 32

OBJECTS = (
    "circle", "square", "triangle", "star", "cross",
    "heart", "moon", "arrow", "house", "ring",
)  # fmt: skip
STYLES = (
    "striped", "dotted", "checkered", "outlined", "gradient",
    "diagonal", "neon", "pastel", "grainy", "blueprint",
)  # fmt: skip

# Every concept has three names, all trained on. The canonical one is the concept's id. The
# test-only one is for measuring alone, like a test seed: no SAE training prompt, concept
# statistic, feature selection, recipe or tuning run may see it (``saeuron tune`` refuses
# it, through the bundle's ``held_out_terms``). The validation one is the stand-in that tuning
# and the choice between variants may use. No test-only name shares a word with a template.
TEST_ONLY_NAMES = {
    "circle": "disc", "square": "box", "triangle": "wedge", "star": "pentagram",
    "cross": "plus sign", "heart": "love symbol", "moon": "crescent", "arrow": "pointer",
    "house": "cottage", "ring": "donut",
    "striped": "banded", "dotted": "polka dot", "checkered": "checkerboard",
    "outlined": "line art", "gradient": "ombre", "diagonal": "slanted", "neon": "glowing",
    "pastel": "soft colour", "grainy": "noisy", "blueprint": "cyanotype",
}  # fmt: skip
VALIDATION_NAMES = {
    "circle": "orb", "square": "tile", "triangle": "pyramid", "star": "asterisk",
    "cross": "cruciform", "heart": "valentine", "moon": "sickle", "arrow": "dart",
    "house": "cabin", "ring": "hoop",
    "striped": "barred", "dotted": "speckled", "checkered": "chessboard",
    "outlined": "contour", "gradient": "blended", "diagonal": "oblique",
    "neon": "fluorescent", "pastel": "pale", "grainy": "gritty", "blueprint": "schematic",
}  # fmt: skip
NAMINGS = ("canonical", "validation", "test_only")

TEST_TEMPLATES = ("An image of {object} in {style} style.",)
# Two objects, placed apart, in one style: collateral damage shows on the other object.
SCENE_TEST_TEMPLATES = ("An image of a {object} and a {object2} in {style} style.",)
SCENE_TEMPLATES = (
    "A {style} picture of a {object} and a {object2}.",
    "A {object} and a {object2}, {style} style.",
    "A drawing of a {object} beside a {object2} in {style} style.",
)
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
    return _paint(style, mask, cy - size, 2 * size, rng)


def render_scene(objects: tuple[str, str], style: str, rng: np.random.Generator) -> np.ndarray:
    """Two objects side by side (left, right; not touching) in one style."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    mask = np.zeros((SIZE, SIZE), bool)
    tops, bottoms = [], []
    half = SIZE / 2
    for side, obj in enumerate(objects):
        size = rng.uniform(6.0, 7.5)
        offset = rng.uniform(size + 0.5, half - size)
        cx = offset if side == 0 else SIZE - offset
        cy = rng.uniform(size + 1, SIZE - size - 1)
        mask |= SHAPES[obj]((xx - cx) / size, (yy - cy) / size)
        tops.append(cy - size)
        bottoms.append(cy + size)
    return _paint(style, mask, min(tops), max(bottoms) - min(tops), rng)


def _paint(
    style: str, mask: np.ndarray, top: float, height: float, rng: np.random.Generator
) -> np.ndarray:
    """The style's palette and texture on ``mask`` over a background; ``top`` and ``height``
    span the painted rows (a gradient runs across them)."""
    yy = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)[0] + 0.5
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
        t = ((yy - top) / height).clip(0, 1)[..., None]
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


def concept_kind(concept: str) -> str:
    """``"object"`` or ``"style"``; anything else is a config error listing both. Here, with
    the names, so that the configs check concepts without loading the model code."""
    key = concept.strip().lower()
    if key in OBJECTS:
        return "object"
    if key in STYLES:
        return "style"
    raise ConfigError(
        "concept",
        f"{concept!r} is not a MiniCanvas concept; objects: {', '.join(OBJECTS)}; "
        f"styles: {', '.join(STYLES)}",
    )


def name(concept: str, naming: str = "canonical") -> str:
    """The concept's canonical, validation or test-only name."""
    if naming == "canonical":
        return concept
    if naming == "validation":
        return VALIDATION_NAMES[concept]
    if naming == "test_only":
        return TEST_ONLY_NAMES[concept]
    raise ValueError(f"unknown naming {naming!r}; allowed: {', '.join(NAMINGS)}")


def caption(obj: str, style: str | None, template: str, obj2: str | None = None) -> str:
    fields = {"object": obj, "style": style or "", "object2": obj2 or ""}
    return template.format(**fields)


def sample_scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` two-object scenes: ``(images, objects [n, 2] (distinct), styles)``."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(OBJECTS), n)
    second = (first + rng.integers(1, len(OBJECTS), n)) % len(OBJECTS)
    styles = rng.integers(0, len(STYLES), n)
    images = []
    for a, b, s in zip(first, second, styles, strict=True):
        # Which object sits on the left is independent of the caption's order.
        pair = (OBJECTS[a], OBJECTS[b]) if rng.random() < 0.5 else (OBJECTS[b], OBJECTS[a])
        images.append(render_scene(pair, STYLES[s], rng))
    return np.stack(images), np.stack([first, second], axis=1), styles


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


def _training_name(concept: str, rng: np.random.Generator) -> str:
    # Half the captions use the canonical name and a quarter each of the other two, enough
    # for the model to follow any of them.
    roll = rng.random()
    naming = "canonical" if roll < 0.5 else "validation" if roll < 0.75 else "test_only"
    return name(concept, naming)


def training_caption(obj: int, style: int, rng: np.random.Generator) -> str:
    """A caption for a training image: mostly styled, in any known phrasing and naming."""
    o, s = _training_name(OBJECTS[obj], rng), _training_name(STYLES[style], rng)
    roll = rng.random()
    if roll < 0.15:
        templates = UNSTYLED_TEMPLATES + UNSTYLED_ANCHORS
        return caption(o, None, templates[rng.integers(len(templates))])
    templates = TEST_TEMPLATES * 3 + ANCHOR_TEMPLATES
    return caption(o, s, templates[rng.integers(len(templates))])


def scene_caption(objects: tuple[int, int], style: int, rng: np.random.Generator) -> str:
    """A caption for a training scene of two objects."""
    a, b = (_training_name(OBJECTS[i], rng) for i in objects)
    s = _training_name(STYLES[style], rng)
    templates = SCENE_TEST_TEMPLATES * 2 + SCENE_TEMPLATES
    return caption(a, s, templates[rng.integers(len(templates))], b)
