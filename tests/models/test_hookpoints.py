"""Hookpoints: a UNet's attention blocks, a transformer's blocks, found by module path."""

from __future__ import annotations

import pytest

from saeuron.models.hookpoints import list_hookpoints, resolve_module
from saeuron.utils.errors import ConfigError


def test_unet_hookpoints_are_its_attention_blocks(tiny_sd) -> None:
    names = list_hookpoints(tiny_sd)
    assert "unet.up_blocks.1.attentions.1" in names
    assert all(".attentions." in n and "transformer_blocks" not in n for n in names)


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("tiny_sd3", [f"transformer.transformer_blocks.{i}" for i in range(3)]),
        ("tiny_pixart", [f"transformer.transformer_blocks.{i}" for i in range(3)]),
        (
            "tiny_flux",
            ["transformer.transformer_blocks.0", "transformer.transformer_blocks.1",
             "transformer.single_transformer_blocks.0", "transformer.single_transformer_blocks.1"],
        ),
    ],
)  # fmt: skip
def test_transformer_hookpoints_are_its_blocks(fixture, expected, request) -> None:
    pipe = request.getfixturevalue(fixture)
    assert list_hookpoints(pipe) == expected
    for name in expected:
        block = resolve_module(pipe, name)
        # The same module by its path inside the denoiser.
        assert resolve_module(pipe, name.removeprefix("transformer.")) is block


def test_an_unknown_block_names_the_blocks_there(tiny_flux) -> None:
    with pytest.raises(ConfigError, match="single_transformer_blocks.1") as err:
        resolve_module(tiny_flux, "transformer.transformer_blocks.7")
    assert str(err.value).startswith("hookpoint: 'transformer.transformer_blocks.7' is not")
