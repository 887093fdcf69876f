"""Golden outputs: what the erasure draws today, kept bit for bit through refactors.

Refactors of the configs, the hook and model resolution must not change behaviour.
These images, drawn on the bundled MiniCanvas model for fixed seeds, pin that down: the public
API (``saeuron.SAeUron``) and the low-level ``saeuron.erase`` path, erased and not, for every
rule, on the sparse and the dense edit path, and with an SAE that standardises its input
(MiniCanvas's SAEs do not, so without it the standardising code would go unchecked).

The arrays in ``tests/golden/minicanvas.safetensors`` were made on a CPU; another CPU
(another instruction set) may round differently. Regenerating them is a decision, never a
side effect of running the tests::

    python tests/test_golden.py --regenerate
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import saeuron
from saeuron import ConceptFeatures, Sae

GOLDEN = Path(__file__).resolve().parent / "golden" / "minicanvas.safetensors"
CONCEPT = "moon"
ANCHOR = "circle"
"""The anchor concept the ``anchor`` rule writes in: another object at the same block."""
PROMPTS = ["An image of moon in checkered style.", "An image of heart in striped style."]
"""The concept, and a prompt without it (its image must come through the same)."""
SEED = 0
STEPS = 4
"""Few steps keep the test short; the features' 20-step statistics are mapped onto them."""
RULE_MULTIPLIER = -1.0
"""gamma for the rules beyond ``scale`` (``ablate``, ``anchor``, ``project``): past the
concept's retained value, so every rule changes the image."""
SCALE_MULTIPLIER = -20.0
"""gamma for ``scale`` on the low-level path, SAeUron's default."""
API_MULTIPLIER = -100.0
"""gamma of the API's ``scale`` case: the moon's tuned value, named so that the construction
stays the published method whatever a bundle's defaults (a tuned recipe) become."""


class Scene:
    """What every case draws with: the pipeline, SAE and features of one public construction."""

    def __init__(self) -> None:
        self.tech = saeuron.SAeUron(
            erase_concept=CONCEPT, model="minicanvas", device="cpu", multiplier=API_MULTIPLIER
        )
        self.pipe = self.tech.pipe
        self.sae: Sae = self.tech.sae
        self.features: ConceptFeatures = self.tech.concept
        self.anchored = self.features.with_anchor(self._bundled(ANCHOR))
        self.unit_sae, self.unit_features = self._standardising()

    def _bundled(self, concept: str) -> ConceptFeatures:
        # Through the public constructor on the same pipeline, so the test names no bundle
        # layout: what SAeUron loads for the concept is its bundled features.
        other = saeuron.SAeUron(
            pipe=self.pipe, erase_concept=concept, model="minicanvas", multiplier=RULE_MULTIPLIER
        )
        return other.concept

    def _standardising(self) -> tuple[Sae, ConceptFeatures]:
        """The MiniCanvas SAE set to standardise its input, and the concept's latents with
        threshold 0 (its thresholds were measured without standardising)."""
        cfg = copy.deepcopy(self.sae.cfg)
        cfg.input_unit_norm = True
        sae = Sae(cfg)
        sae.load_state_dict(self.sae.state_dict())
        sae.meta = dict(self.sae.meta)
        f = self.features
        meta = {**f.meta, "sae_fingerprint": sae.fingerprint()}
        features = ConceptFeatures(
            concept=f.concept, indices=f.indices, mean=f.mean,
            threshold=torch.zeros_like(f.threshold), timesteps=f.timesteps, meta=meta,
            retain=f.retain,
        )  # fmt: skip
        return sae, features

    def draw(self, context: AbstractContextManager[Any] | None = None) -> torch.Tensor:
        """The pipeline's images for :data:`PROMPTS` inside ``context``, ``[n, h, w, 3]`` uint8."""
        generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(len(PROMPTS))]
        with context or nullcontext():
            images = self.pipe(
                PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, generator=generators
            ).images
        return _stack(images)

    def api(self, erase: bool = True, **config: Any) -> torch.Tensor:
        """The public API: ``SAeUron(...).generate``; ``config`` empty means the construction
        of the scene itself (a fresh one loads the pipeline again, the same images)."""
        tech = self.tech
        if config:
            tech = saeuron.SAeUron(pipe=self.pipe, erase_concept=CONCEPT, model="minicanvas",
                                   **config)  # fmt: skip
        images = tech.generate(PROMPTS, seed=SEED, num_inference_steps=STEPS, erase_concept=erase)
        return _stack(images)

    def erased(self, sae: Sae, features: ConceptFeatures, **overrides: Any) -> torch.Tensor:
        return self.draw(saeuron.erase(self.pipe, sae, features, warn_unedited=False, **overrides))

    def sae_forward(self) -> torch.Tensor:
        """The standardising SAE's reconstruction of fixed inputs (``Sae.forward``)."""
        x = torch.randn(64, self.unit_sae.d_in, generator=torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            return self.unit_sae(x).sae_out


def _stack(images: list[Any]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in images]))


def _low_level(scene: Scene, rule: str, path: str) -> Callable[[], torch.Tensor]:
    features = scene.anchored if rule == "anchor" else scene.features
    multiplier = SCALE_MULTIPLIER if rule == "scale" else RULE_MULTIPLIER
    return lambda: scene.erased(scene.sae, features, multiplier=multiplier, rule=rule,
                                edit_path=path)  # fmt: skip


def _standardised(scene: Scene, **overrides: Any) -> Callable[[], torch.Tensor]:
    return lambda: scene.erased(scene.unit_sae, scene.unit_features, **overrides)


def cases(scene: Scene) -> dict[str, Callable[[], torch.Tensor]]:
    """Every golden output by name; the names are the keys of the golden file."""
    made: dict[str, Callable[[], torch.Tensor]] = {
        "api.plain": lambda: scene.api(erase=False),
        "api.scale": lambda: scene.api(),
        "api.ablate": lambda: scene.api(rule="ablate", multiplier=RULE_MULTIPLIER),
        "api.project": lambda: scene.api(rule="project", multiplier=RULE_MULTIPLIER),
        "erase.plain": lambda: scene.draw(),
    }
    for rule in ("scale", "ablate", "anchor", "project"):
        for path in ("sparse", "dense"):
            made[f"erase.{rule}.{path}"] = _low_level(scene, rule, path)
    made["erase.scale.paper"] = _low_level_paper(scene)
    gamma = SCALE_MULTIPLIER
    made["unit.scale.sparse"] = _standardised(scene, multiplier=gamma, edit_path="sparse")
    made["unit.scale.dense"] = _standardised(scene, multiplier=gamma, edit_path="dense")
    made["unit.scale.paper"] = _standardised(scene, multiplier=gamma, error_term="paper")
    made["unit.ablate"] = _standardised(scene, multiplier=RULE_MULTIPLIER, rule="ablate")
    made["unit.project"] = _standardised(scene, multiplier=RULE_MULTIPLIER, rule="project")
    made["unit.sae_forward"] = scene.sae_forward
    return made


def _low_level_paper(scene: Scene) -> Callable[[], torch.Tensor]:
    return lambda: scene.erased(scene.sae, scene.features, multiplier=SCALE_MULTIPLIER,
                                error_term="paper")  # fmt: skip


PLAIN = ("api.plain", "erase.plain")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread. Kernels split their sums by thread, and another split
    rounds differently (measured: two threads change some images); one thread is also the
    faster on a busy machine, where two would wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def draw_all() -> dict[str, torch.Tensor]:
    # Seeded here: a module fixture runs before the per-test seed of tests/conftest.py.
    torch.manual_seed(0)
    with one_thread():
        scene = Scene()
        return {name: make().contiguous() for name, make in cases(scene).items()}


@pytest.fixture(scope="module")
def drawn() -> dict[str, torch.Tensor]:
    # The user's cache is kept out by tests/conftest.py; the network by HF_HUB_OFFLINE.
    return draw_all()


def test_outputs_are_bit_identical_to_the_golden_ones(drawn: dict[str, torch.Tensor]) -> None:
    golden = load_file(GOLDEN)
    assert sorted(drawn) == sorted(golden), "the cases changed: regenerate on purpose"
    differ = [name for name in golden if not torch.equal(drawn[name], golden[name])]
    assert not differ, (
        f"not bit-identical to {GOLDEN.name}: {differ}. A refactor must not change them; if "
        "the change is intended (or this CPU rounds differently), regenerate with "
        "`python tests/test_golden.py --regenerate` and say why in the commit"
    )


def test_every_erasure_changes_the_concepts_image(drawn: dict[str, torch.Tensor]) -> None:
    """Golden images of erasures that edit nothing would pin down nothing."""
    images = {n: t for n, t in drawn.items() if t.dtype == torch.uint8}
    for name, image in images.items():
        plain = drawn["api.plain"]
        if name in PLAIN:
            assert torch.equal(image, plain), name
            continue
        assert not torch.equal(image[0], plain[0]), f"{name} left the concept's image as it was"


def regenerate() -> None:
    # As under pytest (tests/conftest.py): no network, and an empty cache, so that a changed
    # copy of the bundle in the user's cache cannot stand in for the shipped one.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["SAEURON_CACHE"] = tempfile.mkdtemp(prefix="saeuron-golden-")
    outputs = draw_all()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file(outputs, GOLDEN, metadata={"torch": torch.__version__, "steps": str(STEPS)})
    print(f"wrote {len(outputs)} outputs to {GOLDEN}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Golden outputs of the erasure.")
    parser.add_argument("--regenerate", action="store_true", help="draw and overwrite them")
    if not parser.parse_args().regenerate:
        parser.print_help()
        sys.exit(2)
    regenerate()
