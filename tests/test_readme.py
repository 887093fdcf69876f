"""Every ``saeuron ...`` command in README.md's code blocks is a command the CLI accepts.

Each example is read out of the README (so an example added later is checked too; the docs'
pages are checked the same way by tests/test_docs.py, with these functions); its
sub-command path must show ``--help``, every flag it uses must be listed there, and the whole
example must parse with the real argparse parser. Nothing is run that loads a model: a
renamed or removed flag, sub-command or positional fails here. Examples that also need a
GPU or the network to *run* are marked below with the reason; the few that load nothing are
run for real.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from saeuron.cli.main import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)

# What running an example needs beyond a CPU, keyed by a fragment of the example. Only
# parsing is checked for these here; the fragments must still be in the README.
NEEDS = {
    "saeuron tune ": "Optuna and minutes of sampling (tests/eval/test_tuning.py and "
    "tests/test_examples.py run tune on the tiny pipeline)",
    "saeuron ui ": "gradio and a browser (tests/ui/ serves the page)",
}
# Examples that load no model: run for real (exit code 0).
RUN = {
    "saeuron eval -c examples/eval/minicanvas_moon.json --check",
    "saeuron eval --list",
    "saeuron env",
}


def commands_in(text: str, skip_text_blocks: bool = False) -> list[str]:
    """The ``saeuron`` commands of ``text``'s fenced code blocks, one per example, with
    ``a | b`` alternatives of a sub-command expanded and ``[--optional]`` brackets dropped.
    ``skip_text_blocks``: leave out blocks marked ```` ```text ```` (program output, and the
    docs' record of commands from an earlier release)."""
    commands: list[str] = []
    for match in FENCE.finditer(text):
        if match.group(0).startswith("```python") or (
            skip_text_blocks and match.group(0).startswith("```text")
        ):
            continue
        for line in match.group(1).replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            line = line.split("&&")[-1].strip() if "&&" in line else line
            if not line.startswith("saeuron "):
                continue
            words = shlex.split(line, comments=True)
            words = [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words]
            if "|" in words:  # "saeuron minicanvas train | assets | sweep": one per choice
                first = words.index("|") - 1
                choices = [w for w in words[first:] if w != "|"]
                commands += [shlex.join([*words[:first], c]) for c in choices]
            else:
                commands.append(shlex.join(words))
    return commands


def readme_commands() -> list[str]:
    return commands_in(README.read_text(encoding="utf-8"))


COMMANDS = readme_commands()


def example(command: str) -> object:
    """The example as a test case; one that needs a GPU or the network says so in its id."""
    why = next((why for fragment, why in NEEDS.items() if fragment in command), None)
    return pytest.param(command, id=f"{command} [running needs {why}]" if why else command)


def command_path(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The sub-command words at the start of ``argv`` (``minicanvas saemnesia sweep``)."""
    path: list[str] = []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        path.append(word)
        parser = subs[0].choices[word]
    return path


def subcommands(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    """The steps of the group at ``path`` ([] when ``path`` ends at a command)."""
    for word in [*path, None]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return []
        if word is None:
            return list(subs[0].choices)
        parser = subs[0].choices[word]
    return []


def test_the_readme_has_examples_and_every_mark_is_used() -> None:
    assert len(COMMANDS) >= 5, COMMANDS
    text = README.read_text(encoding="utf-8")
    for fragment in (*NEEDS, *RUN):
        assert fragment in text or fragment in COMMANDS, f"stale mark: {fragment}"


def test_the_readme_is_short_and_starts_with_the_set_up() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < 12 * 1024, "README.md over 12 KB: move detail to docs/"
    first_block = FENCE.search(text)
    assert first_block is not None
    assert first_block.group(1).splitlines()[:2] == [
        'pip install torch==2.13.0 -e ".[dev]" && saeuron demo   # the main job: erase a '
        "concept from the bundled model",
        "python -m pytest -q                                     # the tests",
    ]


def test_the_readme_python_example_is_the_one_the_tests_run() -> None:
    """The README's Python block ends with examples/quickstart.py's marked section, which
    tests/test_examples.py runs."""
    import textwrap

    text = README.read_text(encoding="utf-8")
    block = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert block is not None
    script = (README.parent / "examples" / "quickstart.py").read_text(encoding="utf-8")
    section = script.split("# --8<-- [start:readme]\n")[1].split("    # --8<-- [end:readme]")[0]
    assert block.group(1).rstrip().endswith(textwrap.dedent(section).rstrip())


def check_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``command`` names a sub-command whose help lists every flag it uses, and parses."""
    argv = shlex.split(command)[1:]
    parser = build_parser(argv[0])
    path = command_path(parser, argv)
    assert path, f"no sub-command in {command!r}"

    with pytest.raises(SystemExit) as shown:
        main([*path, "--help"])
    help_text = capsys.readouterr().out
    assert shown.value.code == 0 and f"usage: saeuron {' '.join(path)}" in help_text
    for word in argv:
        flag = word.split("=")[0]
        if flag.startswith("--"):
            assert flag in help_text, f"{flag} is not in `saeuron {' '.join(path)} --help`"

    steps = subcommands(build_parser(argv[0]), path)
    if steps:  # "saeuron minicanvas saemnesia" names a group: each of its steps is shown
        assert argv == path, f"{argv[len(path)]!r} is not a step of saeuron {' '.join(path)}"
        for step in steps:
            with pytest.raises(SystemExit) as shown:
                main([*path, step, "--help"])
            assert shown.value.code == 0, (path, step)
            assert f"usage: saeuron {' '.join([*path, step])}" in capsys.readouterr().out
        return
    try:
        args = build_parser(argv[0]).parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{command!r} does not parse: {capsys.readouterr().err.strip()} ({err})")
    assert callable(getattr(args, "handler", None)), command


@pytest.mark.parametrize("command", [example(c) for c in COMMANDS])
def test_readme_example_parses(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    check_command(command, capsys)


@pytest.mark.parametrize("command", sorted(RUN))
def test_readme_examples_that_load_nothing_run(command: str, capsys) -> None:
    assert command in COMMANDS
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.strip()
