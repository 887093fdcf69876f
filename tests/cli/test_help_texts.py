"""What ``--help`` says: no sentinel shown as a default, bounds as they must be typed, no flag
that changes nothing."""

from __future__ import annotations

import argparse
import warnings

import pytest

from saeuron.cli.main import COMMANDS, CliDeprecationWarning, build_parser, show_deprecations
from saeuron.training.trainer import TrainConfig
from saeuron.utils.config_checks import describe_bounds


def command_parser(*path: str) -> argparse.ArgumentParser:
    """The parser of ``saeuron <path...>`` (a command, or a command and its action)."""
    parser = build_parser(path[0])
    for name in path:
        parser = parser._subparsers._group_actions[0].choices[name]
    return parser


def option_help(parser: argparse.ArgumentParser, flag: str) -> str:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.help or ""


def test_an_option_without_a_default_shows_none() -> None:
    # train --labels belongs to the supervised group: optional at parse time, no default.
    parser = command_parser("train")
    text = option_help(parser, "--labels")
    assert "MISSING" not in text and "default:" not in text, text
    assert "MISSING" not in parser.format_help()


def test_whole_number_bounds_are_printed_exactly() -> None:
    assert describe_bounds({"ge": 0, "le": 2**63 - 1}) == ">= 0 and <= 9223372036854775807"
    assert describe_bounds({"le": 100_000_000}) == "<= 100000000"
    # Fractions keep the compact form.
    assert describe_bounds({"gt": 0.0, "lt": 1.5}) == "> 0 and < 1.5"
    text = option_help(command_parser("capture"), "--seed")
    assert "<= 9223372036854775807" in text and "e+" not in text, text


@pytest.mark.parametrize("command", ["capture", "train", "bench", "convert", "hub", "env"])
def test_no_help_text_of_ours_shows_a_sentinel_or_a_rounded_bound(command) -> None:
    parsers = [command_parser(command)]
    seen = []
    while parsers:
        parser = parsers.pop()
        seen.append(parser.format_help())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    text = "\n".join(seen)
    assert "_MISSING_TYPE" not in text and "e+18" not in text and "e+08" not in text


def test_train_lists_no_flag_that_changes_nothing() -> None:
    text = command_parser("train").format_help()
    for flag in ("--multi-topk", "--sample-topk", "--batch-topk"):
        assert flag not in text, flag
    assert "unused" not in text


def test_the_old_no_op_flags_still_parse_with_a_warning() -> None:
    parser = command_parser("train")
    show_deprecations()
    with pytest.warns(CliDeprecationWarning) as caught:
        args = build_parser("train").parse_args(
            ["train", "--activations", "acts", "--out", "o", "--multi-topk", "--no-batch-topk"]
        )
    messages = " ".join(str(w.message) for w in caught)
    assert "--multi-topk" in messages and "--topk" in messages
    # The config is what it would be without them.
    assert TrainConfig.from_args(args) == TrainConfig(activations="acts", out="o")
    assert "--multi-topk" not in parser.format_usage()


def test_every_command_has_a_listed_help_line() -> None:
    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_parser()  # building the top level warns of nothing
