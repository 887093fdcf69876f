"""The command line itself: help without heavy imports, versions, the error boundary."""

from __future__ import annotations

import subprocess
import sys

import pytest

import saeuron.cli.generate as generate_command
from saeuron.cli.main import COMMANDS, build_parser, main


def test_top_level_help_lists_every_command_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from saeuron.cli.main import build_parser\n"
        "text = build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(text)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    for name, (_, help_text) in COMMANDS.items():
        assert name in out and help_text.split(";")[0][:30] in out


def test_version_and_subcommand_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("saeuron ")
    text = build_parser("generate")._subparsers._group_actions[0].choices["generate"].format_help()
    assert "{cond,both}" in text and "{exact,paper}" in text
    assert "(default: None)" not in text


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    code = main(["generate", "--erase", "moon", "--prompt", "x", "--out", str(tmp_path / "a.txt"),
                 "--model", "minicanvas"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("saeuron generate: error: out:")
    assert "Traceback" not in err
    code = main(["generate", "--erase", "moon", "--prompt", "x", "--out", str(tmp_path / "a.png"),
                 "--model", "minicanvas", "--multiplier", "nan"])  # fmt: skip
    assert code == 2 and "multiplier: got nan; must be a finite number" in capsys.readouterr().err


def test_debug_shows_the_traceback_and_bugs_are_not_swallowed(tmp_path, monkeypatch) -> None:
    argv = ["generate", "--erase", "moon", "--prompt", "x", "--out", str(tmp_path / "a.txt")]
    with pytest.raises(Exception, match="must end in .png"):
        main(["--debug", *argv])

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(generate_command, "run", bug)
    parser_argv = ["generate", "--erase", "moon", "--prompt", "x", "--out", str(tmp_path / "b.png")]
    with pytest.raises(RuntimeError, match="a bug"):
        main(parser_argv)
