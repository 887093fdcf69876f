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
    "minicanvas": "saeuron.cli.minicanvas",
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
    "saeuron.minicanvas.assets_config",
    "saeuron.minicanvas.bench_config",
    "saeuron.minicanvas.guided_config",
    "saeuron.minicanvas.model_config",
    "saeuron.minicanvas.saemnesia_config",
    "saeuron.minicanvas.sequential_config",
    "saeuron.minicanvas.world",
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


def help_code(argv: list[str]) -> str:
    """Code that runs ``saeuron <argv> --help`` in-process and checks it printed a usage."""
    return (
        "import contextlib, io\n"
        "from saeuron.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        f"    main([*{argv!r}, '--help'])\n"
        "assert 'usage: saeuron' in out.getvalue(), out.getvalue()\n"
    )


@pytest.mark.parametrize("command", [*COMMAND_MODULES, "cache"])
def test_help_builds_the_whole_parser_without_torch(command: str) -> None:
    # --help builds every flag, and with them the defaults of the nested configs
    # (SamplingConfig, SaeConfig): none of that may load torch. 'cache' is capture's old name.
    assert heavy_modules_after(help_code([command])) == []


# Every step of `saeuron minicanvas`, nested ones included: each reads its own config.
MINICANVAS_STEPS = (
    "train", "assets", "bench", "sequential", "saemnesia", "saemnesia build", "guided",
    "guided build",
)  # fmt: skip


@pytest.mark.parametrize("step", MINICANVAS_STEPS)
def test_minicanvas_step_help_without_torch(step: str) -> None:
    assert heavy_modules_after(help_code(["minicanvas", *step.split()])) == []


def test_minicanvas_configs_stay_importable_from_their_old_modules() -> None:
    # The configs moved to torch-free modules; code that imports them from the model modules
    # gets the same classes (checked in a fresh interpreter: this loads torch).
    code = (
        "from saeuron.minicanvas import assets, assets_config, bench, bench_config, guided\n"
        "from saeuron.minicanvas import guided_config, judge, model, model_config, saemnesia\n"
        "from saeuron.minicanvas import saemnesia_config, sequential, sequential_config, world\n"
        "assert assets.AssetConfig is assets_config.AssetConfig\n"
        "assert assets.NAME == assets_config.NAME\n"
        "assert assets.concept_kind is world.concept_kind\n"
        "assert bench.BenchConfig is bench_config.BenchConfig\n"
        "assert bench.QUICK_CONCEPTS is bench_config.QUICK_CONCEPTS\n"
        "assert bench.DEFAULT_VARIANTS is bench_config.DEFAULT_VARIANTS\n"
        "assert judge.VARIANTS is bench.VARIANTS is bench_config.VARIANTS\n"
        "assert judge.VARIANT_LABELS is bench_config.VARIANT_LABELS\n"
        "assert guided.GuidedBuildConfig is guided_config.GuidedBuildConfig\n"
        "assert guided.DEFAULT_HOOKPOINTS is guided_config.DEFAULT_HOOKPOINTS\n"
        "assert model.ModelTrainConfig is model_config.ModelTrainConfig\n"
        "assert saemnesia.SupervisedBuildConfig is saemnesia_config.SupervisedBuildConfig\n"
        "assert sequential.SequentialConfig is sequential_config.SequentialConfig\n"
        "assert sequential.SEQUENTIAL_VARIANTS is sequential_config.SEQUENTIAL_VARIANTS\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
