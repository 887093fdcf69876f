"""Property tests of the command line: random flag values never give a traceback.

``saeuron generate`` gets the bundled model's valid command with random values for some of
its flags; ``saeuron eval --check`` gets a valid config with random values in it. Each run
either refuses in one line naming the flag or field (exit code 2) or is accepted: ``eval
--check`` prints its plan (0), and ``generate`` gets as far as loading the model, which is
where these tests stop it. A bounded number of examples runs in the default tier, more in
the slow tier.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import saeuron.erasure.technique as technique  # noqa: E402
from saeuron.cli.main import main  # noqa: E402

FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
MANY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

_ROOT = Path(tempfile.mkdtemp(prefix="saeuron-fuzz-cli-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

NASTY = st.sampled_from(
    ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1e30", "-1", "0", "1", "2", "7", "0.5",
     "64", "100", "4096", "99999999999999999999", "abc", "cuda", "cuda:3", "mps", "cpu",
     "null", "[0, 0.5]", "0,1", "1,0", '{"a": 1}', "../x", "/", "moon", "moon,moon", " , ",
     "\u00e9\u00df\u4e2d", "-", "--", "x" * 200]
)  # fmt: skip
VALUES = NASTY | st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                blacklist_characters="\x00"), max_size=10)
# fmt: skip

GENERATE_FLAGS = [
    "--multiplier", "--num-inference-steps", "--guidance-scale", "--device", "--seed",
    "--batch-size", "--height", "--width", "--hookpoint", "--window", "--num-features",
    "--num-images", "--guidance-half", "--rule", "--error-term", "--scheduler", "--preset",
    "--erase", "--prompt", "--sae", "--features", "--feature-method", "--model",
]  # fmt: skip


# Values each flag accepts, drawn half the time, so that valid commands are tried as well.
GOOD = {
    "--multiplier": ["-5", "-20", "3.5"], "--num-inference-steps": ["1", "4", "20"],
    "--guidance-scale": ["2", "7.5"], "--device": ["cpu"], "--seed": ["0", "12345"],
    "--batch-size": ["1", "3"], "--height": ["64", "128"], "--width": ["64", "96"],
    "--hookpoint": ["unet.up_blocks.1.attentions.1"], "--window": ["0,0.5", "0.2,1"],
    "--num-features": ["1", "8"], "--num-images": ["1", "2"], "--guidance-half": ["cond", "both"],
    "--rule": ["scale", "ablate"], "--error-term": ["exact", "paper"],
    "--scheduler": ["ddim", "pipeline"], "--preset": ["recipe", "paper"],
    "--erase": ["moon", "moon,checkered", "star"], "--prompt": ["a star", "x"],
    "--sae": ["minicanvas"], "--features": ["none/such"],
    "--feature-method": ["shortcut", "contrastive"], "--model": ["minicanvas"],
}  # fmt: skip


class Accepted(BaseException):
    """Raised where generate would load the model: the arguments were all accepted."""


@pytest.fixture(scope="module")
def _stop_at_loading() -> Any:
    # Module scope (Hypothesis runs many examples per test): patched by hand, put back after.
    real = technique.load_pipeline

    def stop(*args: object, **kwargs: object) -> None:
        raise Accepted

    technique.load_pipeline = stop
    yield
    technique.load_pipeline = real


def _outcome(argv: list[str], capsys: Any) -> tuple[int | str, str]:
    capsys.readouterr()
    try:
        code: int | str = main(argv)
    except Accepted:
        code = "accepted"
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code if isinstance(stop.code, int) else 2
    return code, capsys.readouterr().err.strip()


def _one_line(err: str, command: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith(f"saeuron {command}: error")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err


@st.composite
def generate_argv(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    flags = draw(st.lists(st.sampled_from(GENERATE_FLAGS), min_size=1, max_size=4, unique=True))
    argv = ["generate", "--model", "minicanvas", "--erase", "moon", "--prompt", "a moon",
            "--out", str(_ROOT / "out.png")]  # fmt: skip
    for flag in flags:
        argv += [flag, draw(st.sampled_from(GOOD[flag]) | VALUES)]
    return argv, flags


def _check_generate(case: tuple[list[str], list[str]], capsys: Any) -> None:
    argv, flags = case
    code, err = _outcome(argv, capsys)
    event(f"generate: {code}")
    if code == "accepted":
        return
    assert code == 2, (argv, code, err)
    _one_line(err, "generate")


def test_the_base_command_is_accepted(_stop_at_loading, capsys) -> None:
    argv = ["generate", "--model", "minicanvas", "--erase", "moon", "--prompt", "a moon",
            "--out", str(_ROOT / "out.png"), "--multiplier", "-5"]  # fmt: skip
    assert _outcome(argv, capsys)[0] == "accepted"
    code, err = _outcome([*argv, "--height", "nan"], capsys)
    assert code == 2 and "height" in err


# Found by the slow tier: an empty features path was a ValueError from pathlib.
EMPTY_FEATURES = (
    ["generate", "--model", "minicanvas", "--erase", "moon", "--prompt", "a moon", "--out",
     str(_ROOT / "out.png"), "--features", ""],
    ["--features"],
)  # fmt: skip


@FEW
@example(EMPTY_FEATURES)
@given(generate_argv())
def test_generate_flags_never_traceback(_stop_at_loading, capsys, case) -> None:
    _check_generate(case, capsys)


@pytest.mark.slow
@MANY
@given(generate_argv())
def test_generate_flags_never_traceback_many(_stop_at_loading, capsys, case) -> None:
    _check_generate(case, capsys)


# -- eval --check -------------------------------------------------------------------------------

TECHNIQUE_KEYS = ["multiplier", "num_inference_steps", "guidance_scale", "device", "seed",
                  "batch_size", "height", "width", "hookpoint", "window", "rule", "guidance_half",
                  "erase_concept", "model", "sae", "features", "scheduler", "use_fp16"]
# fmt: skip
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), VALUES,
    st.lists(st.floats(-2, 2), max_size=3),
)  # fmt: skip


@st.composite
def eval_argv(draw: st.DrawFn) -> tuple[list[str], dict[str, Any]]:
    config = {"erase_concept": "moon", "model": "minicanvas", "device": "cpu"}
    for key in draw(st.lists(st.sampled_from(TECHNIQUE_KEYS), max_size=3, unique=True)):
        config[key] = draw(JSON_VALUES)
    data = {
        "output_dir": str(_ROOT / "run"),
        "technique": {"name": "saeuron", "config": config},
        "metric": {"name": "clip_score", "config": {}},
    }
    extra: list[str] = []
    if draw(st.booleans()):
        extra += ["--set", f"{draw(st.sampled_from(TECHNIQUE_KEYS))}={draw(VALUES)}"]
    if draw(st.booleans()):
        extra += ["--device", draw(VALUES)]
    return extra, data


def _check_eval(case: tuple[list[str], dict[str, Any]], capsys: Any) -> None:
    extra, data = case
    path = _ROOT / "eval.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as JSON's extensions spell them
    code, err = _outcome(["eval", "-c", str(path), "--check", *extra], capsys)
    event(f"eval --check: {code}")
    assert code in (0, 2), (data, extra, code, err)
    if code == 2:
        _one_line(err, "eval")
    assert not (_ROOT / "run").exists()  # --check writes nothing


@FEW
@given(eval_argv())
def test_eval_check_never_tracebacks(capsys, case) -> None:
    _check_eval(case, capsys)


@pytest.mark.slow
@MANY
@given(eval_argv())
def test_eval_check_never_tracebacks_many(capsys, case) -> None:
    _check_eval(case, capsys)
