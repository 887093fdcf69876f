"""The first erasure: MiniCanvas, the small model shipped with saeuron (CPU, seconds).

    python examples/quickstart.py [OUT_FOLDER]

Erases the style 'striped' with the bundle's tuned recipe (the default), then attaches the
same recipe to a pipeline at half strength, then runs the published SAeUron method
(preset="paper") for comparison. Writes PNGs to OUT_FOLDER (default: ./quickstart-out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import saeuron

PROMPT = "An image of moon in striped style."


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:readme]
    tech = saeuron.SAeUron(erase_concept="striped", model="minicanvas")  # the tuned recipe
    erased = tech.generate([PROMPT] * 2, seed=0)
    plain = tech.generate([PROMPT] * 2, seed=0, erase_concept=False)  # the same, not erased

    pipe = saeuron.load_pipeline("minicanvas")
    with saeuron.attach(pipe, tech.recipe, strengths={"striped": 0.5}) as erasure:
        half = pipe(PROMPT, num_inference_steps=20).images[0]  # half-way to the tuned strength
        erasure.set_strength("striped", 1.0)

    paper = saeuron.SAeUron(erase_concept="striped", model="minicanvas", preset="paper")
    published = paper.generate([PROMPT] * 2, seed=0)  # SAeUron as published
    # --8<-- [end:readme]

    for name, images in (("erased", erased), ("plain", plain), ("paper", published)):
        for i, image in enumerate(images):
            image.save(out / f"{name}-{i}.png")
    half.save(out / "half.png")
    where = [e.hookpoint for e in tech.recipe.concepts["striped"].edits]
    print(f"striped is erased at {', '.join(where)}; wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart-out"))
