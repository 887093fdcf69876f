"""Shared config parts: one declaration, nested flat, with each command's defaults, words and
bounds."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.config_parts import BatchSize, Device, Output, Seed


@dataclass
class _Command(Config):
    name: str = field(help="what to run")
    output: Output = field(Output(out="grid.png"), flatten=True, help="where",
                           describe={"out": "the before/after grid"})  # fmt: skip
    batches: BatchSize = field(BatchSize(batch_size=50), flatten=True, help="batches",
                               describe={"batch_size": "images per call"},
                               limits={"batch_size": {"le": 64}})  # fmt: skip
    runtime: Device = field(Device, flatten=True, help="where it runs")
    seeds: Seed = field(Seed(seed=7), flatten=True, help="seeds")


def test_a_nested_part_reads_writes_and_parses_flat() -> None:
    cfg = _Command.from_dict({"name": "x", "batch_size": 8, "device": "cpu"})
    assert (cfg.out, cfg.batch_size, cfg.device, cfg.seed) == ("grid.png", 8, "cpu", 7)
    assert cfg.to_dict() == {"name": "x", "out": "grid.png", "batch_size": 8, "device": "cpu",
                             "seed": 7}  # fmt: skip
    assert _Command(name="x", seed=3).seed == 3
    assert cfg.replace(out="other.png").out == "other.png"
    parser = argparse.ArgumentParser()
    _Command.add_arguments(parser)
    text = parser.format_help()
    assert "the before/after grid (default: grid.png)" in " ".join(text.split())
    assert "images per call (>= 1 and <= 64; default: 50)" in " ".join(text.split())
    ns = parser.parse_args(["--name", "y", "--batch-size", "16", "--seed", "2"])
    assert _Command.from_args(ns).to_dict()["batch_size"] == 16


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"batch_size": 65}, "batch_size"),  # the command's tighter bound
        ({"batch_size": 0}, "batch_size"),  # the part's own
        ({"device": "gpu"}, "device"),
        ({"seed": -1}, "seed"),
        ({"seeed": 1}, "seeed"),
    ],
)
def test_bad_values_of_a_part_name_the_flat_key(data, field_name) -> None:
    with pytest.raises(ConfigError, match=f"^{field_name}:"):
        _Command.from_dict({"name": "x", **data})


def test_required_output_says_so() -> None:
    with pytest.raises(ConfigError, match="^out: required"):
        Output().require()


@dataclass
class _NeedsOut(Config):
    output: Output = field(Output, flatten=True, help="where", required=("out",),
                           describe={"out": "the folder"})  # fmt: skip
    runtime: Device = field(Device, flatten=True, help="where it runs")


def test_a_nesting_config_can_require_a_part_s_key() -> None:
    with pytest.raises(ConfigError, match="^out: required$"):
        _NeedsOut.from_dict({"device": "cpu"})
    with pytest.raises(ConfigError, match="^out: required$"):
        _NeedsOut()
    with pytest.raises(ConfigError, match="^out: must not be null$"):
        _NeedsOut.from_dict({"out": None})
    assert _NeedsOut(out="x").out == "x"
    parser = argparse.ArgumentParser()
    _NeedsOut.add_arguments(parser)
    assert "--out OUT" in parser.format_usage() and "[--out OUT]" not in parser.format_usage()
    with pytest.raises(SystemExit):
        parser.parse_args([])


@dataclass
class _StepsWithDefault(Config):
    batches: BatchSize = field(BatchSize(batch_size=8), flatten=True, help="batches",
                               required=("batch_size",))  # fmt: skip


def test_a_required_key_with_a_default_refuses_only_null() -> None:
    assert _StepsWithDefault.from_dict({}).batch_size == 8
    with pytest.raises(ConfigError, match="^batch_size: must not be null$"):
        _StepsWithDefault.from_dict({"batch_size": None})
    with pytest.raises(ConfigError, match="^batch_size: must not be null$"):
        _StepsWithDefault(batch_size=None)
    parser = argparse.ArgumentParser()
    _StepsWithDefault.add_arguments(parser)
    assert parser.parse_args([]).batch_size is None  # not required on the command line
