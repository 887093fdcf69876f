"""``saeuron <command> --help`` answers at once: a command's module, its config and its full
parser load no torch, diffusers or transformers (each costs seconds). The model libraries are
imported by the handler that runs the command; ``benchmarks/cli_help_time.py`` times it."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers")

# command -> its module: those whose config once lived beside the model code.
COMMAND_MODULES = {
    "demo": "saeuron.cli.demo",
    "generate": "saeuron.cli.generate",
    "concept": "saeuron.cli.concept",
    "capture": "saeuron.cli.cache",
    "train": "saeuron.cli.train",
    "ui": "saeuron.cli.ui",
}

# The torch-free homes of those commands' configs, which library code imports them from too.
CONFIG_MODULES = (
    "saeuron.erasure.technique_config",
    "saeuron.erasure.concepts.build_config",
    "saeuron.training.capture_config",
    "saeuron.training.train_config",
    "saeuron.training.supervised_config",
    "saeuron.ui.config",
    "saeuron.minicanvas.demo_config",
    "saeuron.models.sampling_config",
)


def heavy_modules_after(code: str) -> list[str]:
    """The heavy libraries loaded once ``code`` has run in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@pytest.mark.parametrize("module", sorted(COMMAND_MODULES.values()))
def test_importing_a_command_module_loads_no_torch(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_a_config_module_loads_no_torch(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


@pytest.mark.parametrize("command", [*COMMAND_MODULES, "cache"])
def test_help_builds_the_whole_parser_without_torch(command: str) -> None:
    # --help builds every flag, and with them the defaults of the nested configs
    # (SamplingConfig, SaeConfig): none of that may load torch. 'cache' is capture's old name.
    code = (
        "import contextlib, io\n"
        "from saeuron.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        f"    main([{command!r}, '--help'])\n"
        "assert 'usage: saeuron' in out.getvalue(), out.getvalue()\n"
    )
    assert heavy_modules_after(code) == []
