"""The examples/ folder runs as the docs say.

- Scripts on MiniCanvas or the tiny pipelines are run as a user runs them (``python
  examples/<script>.py OUT``, in a fresh process): the fast ones in the default tier, the
  rest in the slow tier.
- The shell scripts for real models (examples/real/*.sh: SDXL, FLUX, a GPU, the hub) are not
  run; every ``saeuron`` command in them, ``accelerate launch -m saeuron ...`` included, is
  parsed by the real parser (``build_parser(command).parse_args(...)``).
- The recipe example of docs/recipes.md validates.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from saeuron.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHELL = sorted((EXAMPLES / "real").glob("*.sh"))


def shell_commands(path: Path) -> list[list[str]]:
    """The ``saeuron`` argv of every command in a shell script, its ``VAR=value`` lines
    substituted and ``accelerate launch ... -m saeuron`` / ``ENV= `` prefixes dropped."""
    text = path.read_text("utf-8").replace("\\\n", " ")
    variables: dict[str, str] = {}
    commands = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith(("#", "set ")):
            continue
        assign = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        if assign:
            variables[assign.group(1)] = assign.group(2)
            continue
        for name, value in variables.items():
            line = line.replace(f'"${name}"', value).replace(f"${name}", value)
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words[:2] == ["accelerate", "launch"]:
            words = words[words.index("saeuron") + 1 :]
            assert words, line
        elif words and words[0] == "saeuron":
            words = words[1:]
        else:
            pytest.fail(f"{path.name}: not a saeuron command: {line}")
        commands.append(words)
    return commands


SHELL_COMMANDS = [
    pytest.param(argv, id=f"{path.name}: {' '.join(argv)[:80]}")
    for path in SHELL
    for argv in shell_commands(path)
]


def test_every_real_model_script_has_commands() -> None:
    assert {p.name for p in SHELL} >= {"sd14_nudity.sh", "sdxl_turbo.sh", "transformers.sh",
                                       "gpu.sh", "hub.sh", "at_scale.sh", "ui.sh"}  # fmt: skip
    assert all(shell_commands(p) for p in SHELL)


@pytest.mark.parametrize("argv", SHELL_COMMANDS)
def test_real_model_command_parses(argv: list[str]) -> None:
    args = build_parser(argv[0]).parse_args(argv)
    assert callable(getattr(args, "handler", None)), argv


def test_the_recipe_example_validates() -> None:
    from saeuron.erasure.recipe import Recipe

    data = json.loads((EXAMPLES / "recipe_example.json").read_text("utf-8"))
    recipe = Recipe.from_dict(data, root=EXAMPLES)
    assert recipe.names == ["cat", "dog"]
    assert recipe.concepts["dog"].edits[0].rule == "anchor"


def run_example(script: str, tmp_path: Path, timeout: int = 1200) -> str:
    env = {**os.environ, "SAEURON_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", tmp_path)
    assert "striped is erased at" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"erased-0.png", "half.png",
                                                            "paper-1.png"}  # fmt: skip


def test_recipe_tiny_sd(tmp_path: Path) -> None:
    out = run_example("recipe_tiny_sd.py", tmp_path)
    assert "strength 0 is a no-op" in out
    assert "refused: recipe.base_model" in out and "SHA-256 differs" in out


def test_eval_own_technique(tmp_path: Path) -> None:
    out = run_example("eval_own_technique.py", tmp_path)
    summary = (tmp_path / "out" / "results" / "summary.md").read_text("utf-8")
    assert "my_method" in summary and "| preservation | ssim |" in summary, out


@pytest.mark.slow
def test_own_model_tiny(tmp_path: Path) -> None:
    run_example("own_model_tiny.py", tmp_path)
    assert (tmp_path / "out" / "cat.png").is_file()
    assert (tmp_path / "out" / "features" / "cat.safetensors").is_file()


@pytest.mark.slow
def test_tune_tiny_sd(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    out = run_example("tune_tiny_sd.py", tmp_path)
    assert "recipe:" in out
    assert (tmp_path / "out" / "cat.trials.csv").is_file()


@pytest.mark.slow
def test_ui_tiny_sd(tmp_path: Path) -> None:
    out = run_example("ui_tiny_sd.py", tmp_path)
    assert "sliders: ['cat', 'dog']" in out and "serve it: saeuron ui" in out
