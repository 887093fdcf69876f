"""The config system: declared bounds and choices, finite numbers, nesting, the command line."""

from __future__ import annotations

import argparse
import logging
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


@dataclass
class RenamedInner(Config):
    rows: str = field("cond", choices=("cond", "both"), aliases=("old_rows",), help="which rows")


@dataclass
class Renamed(Config):
    inner: RenamedInner = field(RenamedInner, flatten=True, help="nested, flat in JSON")
    fast: bool = field(False, aliases=("quick",), help="a renamed switch")


def test_an_old_name_is_read_as_the_new_one_with_one_deprecation_message(caplog) -> None:
    new = Renamed(rows="both", fast=True)
    with caplog.at_level(logging.WARNING, logger="saeuron.utils.config"):
        assert Renamed(old_rows="both", quick=True) == new
        assert Renamed.from_dict({"old_rows": "both", "quick": True}) == new
        assert RenamedInner.from_dict({"old_rows": "both"}) == new.inner
    told = [r.getMessage() for r in caplog.records]
    assert len(told) == 5 and sum("use 'rows'" in m for m in told) == 3
    assert not any(r.levelno < logging.WARNING for r in caplog.records)
    # Written back, only the new names appear.
    assert Renamed.from_dict({"old_rows": "both"}).to_dict() == {"rows": "both", "fast": False}
    assert "old_rows" not in Renamed.config_keys()
    assert Renamed.config_aliases() == {"old_rows": "rows", "quick": "fast"}


@pytest.mark.parametrize(
    "data", [{"old_rows": "both", "rows": "cond"}, {"rows": "both", "old_rows": "both"}]
)
def test_both_the_old_and_the_new_name_is_refused_naming_the_field(data) -> None:
    with pytest.raises(ConfigError, match="^rows: given twice, as 'rows' and as its old name"):
        Renamed.from_dict(data)
    with pytest.raises(ConfigError, match="^rows: given twice"):
        Renamed(**data)


def test_an_old_name_is_checked_like_the_new_one() -> None:
    with pytest.raises(ConfigError, match="^rows: got 'all'"):
        Renamed.from_dict({"old_rows": "all"})


def test_misspellings_of_either_name_point_to_the_new_one() -> None:
    for typo in ("rowz", "old_rowz"):
        with pytest.raises(ConfigError, match=f"^{typo}: unknown key \\(did you mean 'rows'\\?\\)"):
            Renamed.from_dict({typo: "both"})
    # What the error lists as allowed is the new names only.
    with pytest.raises(ConfigError) as err:
        Renamed.from_dict({"colour": 1})
    assert str(err.value).endswith("allowed: fast, rows")


def test_the_old_flag_works_and_is_hidden(caplog) -> None:
    parser = argparse.ArgumentParser()
    Renamed.add_arguments(parser)
    assert "--old-rows" not in parser.format_help() and "--quick" not in parser.format_help()
    assert "--rows" in parser.format_help()
    new = Renamed.from_args(parser.parse_args(["--rows", "both", "--fast"]))
    assert Renamed.from_args(parser.parse_args(["--old-rows", "both", "--quick"])) == new
    assert Renamed.from_args(parser.parse_args(["--no-quick"])).fast is False
    with pytest.raises(ConfigError, match="^rows: given twice"):
        Renamed.from_args(parser.parse_args(["--old-rows", "both", "--rows", "cond"]))
