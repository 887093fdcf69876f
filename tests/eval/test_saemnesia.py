"""The saemnesia eval technique on the bundled supervised SAE."""

from __future__ import annotations

import numpy as np
import pytest

from saeuron.utils.config import ConfigError


def test_saemnesia_config_names_what_is_wrong() -> None:
    from saeuron.eval.techniques import technique_config

    with pytest.raises(ConfigError, match="concept.*objects: .*moon"):
        technique_config("saemnesia", {"erase_concept": "zebra", "model": "minicanvas"})
    with pytest.raises(ConfigError, match="sae: name the supervised SAE"):
        technique_config("saemnesia", {"erase_concept": "cat", "model": "tiny-sd"})
    cfg = technique_config("saemnesia", {"erase_concept": "Moon", "model": "minicanvas"})
    assert cfg.hookpoint == "unet.up_blocks.1.attentions.1" and cfg.sae.endswith("saes")


def test_saemnesia_erases_with_one_latent_of_the_bundled_supervised_sae() -> None:
    from saeuron.eval.techniques import build_technique, technique_config

    cfg = technique_config("saemnesia", {"erase_concept": "moon", "model": "minicanvas",
                                         "device": "cpu", "num_inference_steps": 10})  # fmt: skip
    tech = build_technique("saemnesia", cfg)
    assert tech.tech.concept.latents() == {tech.tech.sae.meta["supervised"]["assignment"]["moon"]}
    prompts = ["An image of moon in striped style.", "An image of star in neon style."]
    seeds = [1, 2]
    erased = [np.asarray(i, dtype=float) for i in tech.generate(prompts, seeds)]
    plain = [np.asarray(i, dtype=float) for i in tech.unerased(prompts, seeds)]
    moon_change = np.abs(erased[0] - plain[0]).mean()
    star_change = np.abs(erased[1] - plain[1]).mean()
    assert moon_change > 5 * max(star_change, 0.1)  # the moon changes, the star far less
