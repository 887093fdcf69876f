"""The first erasure: MiniCanvas, the small model shipped with saeuron (CPU, seconds).

    python examples/quickstart.py [OUT_FOLDER]

Erases the style 'striped' with the bundle's tuned recipe (the default), then attaches the
same recipe to a pipeline at half strength, then runs the published SAeUron method
(preset="paper") for comparison. The code between the markers is the README's example.
Writes PNGs to OUT_FOLDER (default: ./quickstart-out).
"""

from __future__ import annotations

import sys
from pathlib import Path

import saeuron

PROMPT = "An image of moon in striped style."


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prompt = PROMPT

    # --8<-- [start:readme]
    tech = saeuron.SAeUron(erase_concept="striped", model="minicanvas")   # the tuned recipe
    erased = tech.generate([prompt] * 2, seed=0)
    plain = tech.generate([prompt] * 2, seed=0, erase_concept=False)     # not erased

    pipe = saeuron.load_pipeline("minicanvas")                            # any diffusers pipeline
    with saeuron.attach(pipe, tech.recipe, strengths={"striped": 0.5}):  # 0 off, 1 tuned
        half = pipe(prompt, num_inference_steps=20).images[0]

    paper = saeuron.SAeUron(erase_concept="striped", model="minicanvas", preset="paper")
    # --8<-- [end:readme]

    published = paper.generate([prompt] * 2, seed=0)  # SAeUron as published
    for name, images in (("erased", erased), ("plain", plain), ("paper", published)):
        for i, image in enumerate(images):
            image.save(out / f"{name}-{i}.png")
    half.save(out / "half.png")
    where = [e.hookpoint for e in tech.recipe.concepts["striped"].edits]
    print(f"striped is erased at {', '.join(where)}; wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quickstart-out"))
