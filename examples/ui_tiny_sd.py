"""The slider page on your own model, without a bundle: the tiny twin of
`saeuron ui --model ... --sae ... --hookpoint ... --recipe ...` (examples/real/ui.sh).

    python examples/ui_tiny_sd.py [OUT_FOLDER]

Writes the recipe of examples/recipe_tiny_sd.py, builds the page's model side (`Studio`,
what `saeuron ui` serves) for `tiny-sd` with that SAE and recipe, moves the recipe's sliders
(0 off, 1 tuned) and, with gradio installed, builds the page itself without serving it.
Prints the command that serves it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from recipe_tiny_sd import HOOK, write_recipe

from saeuron.models.tiny import build_tiny_sd
from saeuron.ui import gradio_missing
from saeuron.ui.config import UiConfig
from saeuron.ui.studio import Settings, Studio


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(out, build_tiny_sd())
    config = UiConfig(model="tiny-sd", sae=str(out / "saes"), hookpoint=HOOK,
                      recipe=str(recipe), steps=2)
    studio = Studio(config)  # what `saeuron ui` loads once, before it serves
    print(f"sliders: {studio.recipe_concepts()} (0 off, 1 the tuned strength)")
    settings = Settings(prompt="a photo of a dog", steps=2)
    plain = np.asarray(studio.generate(settings)[0])
    off = np.asarray(studio.generate(settings, [("dog", 0.0)])[0])
    erased = np.asarray(studio.generate(settings, [("dog", 1.0)])[0])
    assert np.array_equal(off, plain) and not np.array_equal(erased, plain)
    if not gradio_missing():
        from saeuron.ui.page import build_app

        build_app(studio)  # the page, built but not served
        print("page built")
    print(f"serve it: saeuron ui --model tiny-sd --sae {out / 'saes'} --hookpoint {HOOK} "
          f"--recipe {recipe} --steps 2")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("ui-tiny-sd"))
