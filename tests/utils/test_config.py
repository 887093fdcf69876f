"""The config system: declared bounds and choices, finite numbers, nesting, the command line."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import pytest

from saeuron.utils.config import Config, ConfigError, field


@dataclass
class Inner(Config):
    steps: int | None = field(None, ge=1, le=1000, help="denoising steps")
    scale: float = field(7.5, ge=0, le=100, help="guidance scale")
    half: str = field("cond", choices=("cond", "both"), help="which rows")


@dataclass
class Outer(Config):
    name: str = field(positional=True, help="what to do it to")
    path: str = field(help="where to write")
    inner: Inner = field(Inner(scale=9.0), flatten=True, help="nested, flat in JSON")
    gamma: float = field(-1.0, ge=-1000, le=1000, help="strength")
    weights: dict[str, float] = field({}, help="per-name strengths")


def test_declared_bounds_choices_and_finiteness_hold_for_every_construction() -> None:
    for bad, name in (
        ({"gamma": math.nan}, "gamma"),
        ({"gamma": -math.inf}, "gamma"),
        ({"gamma": -1e30}, "gamma"),
        ({"weights": {"cat": math.nan}}, "weights.cat"),
    ):
        with pytest.raises(ConfigError) as err:
            Outer(name="n", path="p", **bad)
        assert err.value.field == name
    # The nested config checks its own fields, from Python and from JSON alike.
    with pytest.raises(ConfigError, match="^steps: got 0; must be >= 1"):
        Outer(name="n", path="p", steps=0)
    with pytest.raises(ConfigError, match="half: got 'cnd' \\(did you mean 'cond'\\?\\)"):
        Outer.from_dict({"name": "n", "path": "p", "half": "cnd"})
    with pytest.raises(ConfigError, match="scale: got nan; must be a finite number"):
        Outer.from_dict({"name": "n", "path": "p", "scale": "nan"})


def test_nested_fields_are_flat_in_json_and_keyword_arguments() -> None:
    cfg = Outer(name="n", path="p", steps=20)
    assert cfg.inner == Inner(steps=20, scale=9.0)  # the field's own default (9.0) kept
    assert cfg.steps == 20 and cfg.scale == 9.0  # reads through to the nested config
    data = cfg.to_dict()
    assert data == {
        "name": "n", "path": "p", "steps": 20, "scale": 9.0, "half": "cond", "gamma": -1.0,
        "weights": {},
    }  # fmt: skip
    assert Outer.from_dict(data) == cfg
    assert cfg.replace(scale=3.0).inner.scale == 3.0
    assert cfg.value("half") == "cond" and cfg.value("nope", 5) == 5
    with pytest.raises(ConfigError, match="stpes: unknown key \\(did you mean 'steps'\\?\\)"):
        Outer.from_dict({"name": "n", "path": "p", "stpes": 3})
    with pytest.raises(ConfigError, match="^path: required"):
        Outer.from_dict({"name": "n"})


def test_command_line_lists_choices_and_bounds_and_never_doubles_defaults() -> None:
    parser = argparse.ArgumentParser()
    Outer.add_arguments(parser)
    text = parser.format_help()
    assert "{cond,both}" in text and "one of cond, both" in text
    assert ">= 1 and <= 1000" in text
    assert text.count("default: 9.0") == 1  # the nested field's overridden default
    args = parser.parse_args(["thing", "--path", "out", "--steps", "5", "--gamma", "-2"])
    cfg = Outer.from_args(args)
    assert (cfg.name, cfg.path, cfg.steps, cfg.gamma, cfg.scale) == ("thing", "out", 5, -2.0, 9.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["thing"])  # --path is required
    with pytest.raises(ConfigError, match="gamma: got nan"):
        Outer.from_args(parser.parse_args(["t", "--path", "o", "--gamma", "nan"]))


def test_a_mapping_is_a_json_object_on_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    Outer.add_arguments(parser)
    args = parser.parse_args(["thing", "--path", "p", "--weights", '{"moon": -5, "ring": 2.5}'])
    assert Outer.from_args(args).weights == {"moon": -5.0, "ring": 2.5}
    for bad in ('{"moon": ', '["moon"]', '{"moon": "strong"}'):
        args = parser.parse_args(["thing", "--path", "p", "--weights", bad])
        with pytest.raises(ConfigError, match=r"^weights"):
            Outer.from_args(args)
