"""The renamed commands and flags: the new spellings work, the old ones still do and warn.

capture (was cache), concept CONCEPT (was concept build CONCEPT), convert KIND as a
sub-command (flags before the kind were accepted), capture --record-steps (was --steps,
which elsewhere is the number of denoising steps).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import saeuron
import saeuron.erasure.concepts.build as concept_build
from saeuron.cli.main import (
    COMMANDS,
    DEPRECATED_COMMANDS,
    CliDeprecationWarning,
    build_parser,
    main,
)

HOOK = "unet.up_blocks.1.attentions.1"


def deprecations(recorded: list) -> list[str]:
    return [str(w.message) for w in recorded if issubclass(w.category, CliDeprecationWarning)]


def test_capture_is_listed_and_cache_is_not() -> None:
    text = build_parser().format_help()
    assert "capture" in COMMANDS and DEPRECATED_COMMANDS == {"cache": "capture"}
    assert "capture" in text and "cache " not in text


def test_cache_is_capture_under_its_old_name_with_one_warning(tmp_path, capsys, recwarn) -> None:
    argv = ["--model", "minicanvas", "--hookpoint", HOOK, "--prompts", str(tmp_path / "no.txt"),
            "--out", str(tmp_path / "acts")]  # fmt: skip
    with pytest.warns(CliDeprecationWarning) as old:
        assert main(["cache", *argv]) == 2
    old_err = capsys.readouterr().err
    assert deprecations(old) == [
        "'saeuron cache' is deprecated and will be removed in the next release; "
        "use 'saeuron capture'"
    ]
    recwarn.clear()
    assert main(["capture", *argv]) == 2
    new_err = capsys.readouterr().err
    assert deprecations(recwarn.list) == []
    # Same refusal, each naming the command the user typed.
    assert old_err.startswith("saeuron cache: error: prompts")
    assert new_err.replace("saeuron capture:", "saeuron cache:") == old_err


def test_capture_record_steps_and_the_old_steps_flag() -> None:
    parser = build_parser("capture")
    base = ["capture", "--model", "m", "--hookpoint", "h", "--prompts", "p.txt", "--out", "o"]
    assert parser.parse_args([*base, "--record-steps", "0,10-12"]).steps == "0,10-12"
    help_text = parser._subparsers._group_actions[0].choices["capture"].format_help()
    assert "--record-steps" in help_text and "--steps" not in help_text
    with pytest.warns(CliDeprecationWarning, match="use 'saeuron capture --record-steps'"):
        assert parser.parse_args([*base, "--steps", "0-5"]).steps == "0-5"


@pytest.fixture
def stub_build(monkeypatch) -> list:
    """concept's handler without the work: the configs it was given."""
    # The handler imports these when it runs (not with the command's module, for --help).
    built: list = []
    monkeypatch.setattr(concept_build, "build_concept", lambda cfg: built.append(cfg) or cfg)
    monkeypatch.setattr(concept_build, "summarize", lambda features: "summary")
    return built


def test_concept_takes_the_build_flags_directly(stub_build, recwarn, capsys) -> None:
    assert main(["concept", "moon", "--model", "minicanvas", "--sae", "minicanvas"]) == 0
    assert stub_build[0].concept == "moon" and deprecations(recwarn.list) == []
    assert "summary" in capsys.readouterr().out


def test_concept_build_still_works_and_warns(stub_build) -> None:
    with pytest.warns(CliDeprecationWarning, match="use 'saeuron concept'"):
        code = main(["concept", "build", "moon", "--model", "minicanvas", "--sae", "minicanvas"])
    assert code == 0 and stub_build[0].concept == "moon"


def test_a_concept_named_build_is_still_a_concept(stub_build, recwarn) -> None:
    assert main(["concept", "build", "--model", "minicanvas", "--sae", "minicanvas"]) == 0
    assert stub_build[0].concept == "build" and deprecations(recwarn.list) == []


def test_convert_kinds_are_sub_commands_with_their_own_flags() -> None:
    parser = build_parser("convert")
    convert = parser._subparsers._group_actions[0].choices["convert"]
    kinds = convert._subparsers._group_actions[0].choices
    assert set(kinds) == {"stats", "params"}
    assert "--hookpoint" in kinds["stats"].format_help()
    assert "--hookpoint" not in kinds["params"].format_help()
    args = parser.parse_args(["convert", "stats", "in.pkl", "--out", "o", "--hookpoint", "h"])
    assert (args.convert_command, args.input, args.hookpoint) == ("stats", "in.pkl", "h")


def test_convert_old_forms_still_work_with_a_warning(tmp_path, capsys) -> None:
    src = tmp_path / "cls_latents_dict_x.pkl"
    src.write_bytes(b"not even a pickle")  # refused before it is read: no trust given
    out = str(tmp_path / "stats")
    with pytest.warns(CliDeprecationWarning, match="flags before the kind"):
        code = main(["convert", "--out", out, "--hookpoint", "h", "stats", str(src)])
    assert code == 2 and "trust_pickle" in capsys.readouterr().err
    with pytest.warns(CliDeprecationWarning, match="params --hookpoint' is deprecated"):
        code = main(["convert", "params", str(src), "--out", str(tmp_path / "p.json"),
                     "--hookpoint", "h"])  # fmt: skip
    assert code == 2 and "trust_pickle" in capsys.readouterr().err
    assert not Path(out).exists()


def test_convert_refusals_stay_one_line(tmp_path, capsys) -> None:
    code = main(["convert", "stats", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("saeuron convert: error: input")


def test_version_is_the_package_version(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"saeuron {saeuron.__version__}"


def test_deprecation_is_one_line_on_the_command_line(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "saeuron", "convert", "--out", str(tmp_path / "s"), "stats",
         str(tmp_path / "none.pkl")],
        capture_output=True, text=True,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert lines[0].startswith("saeuron: warning: 'saeuron convert --out ")
    assert lines[1].startswith("saeuron convert: error: input")


@pytest.mark.parametrize("command", ["env", "hub", "convert", "bench"])
def test_help_that_needs_no_config_imports_no_torch(command) -> None:
    # bench's actions have configs, but its own --help only lists them.
    code = (
        "import sys\n"
        "from saeuron.cli.main import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
