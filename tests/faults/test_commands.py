"""Fault injection, command line: every bad input is one line, exit code 2, nothing written.

Each case runs ``saeuron <command> ...`` in this process with model loading forbidden (a
pipeline load fails the test): the point is that every one of these is refused from the
arguments, config files and tensor headers alone. Each asserts the exit code, that stderr
is exactly one line naming the field or file, that no traceback was printed, and that the
output folder is byte-for-byte what it was (no file written, none left half-written).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from helpers.faults import HOOK, OTHER_HOOK, build_fault_files, leftovers, tree

from saeuron.cli.main import main

pytestmark = pytest.mark.usefixtures("forbid_model_loading")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return build_fault_files(tmp_path_factory.mktemp("faults"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    # Statistics caches go to a folder of the test's own, never to the user's home.
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path_factory.mktemp("cache")))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


GEN = ["generate", "--erase", "moon", "--prompt", "a moon", "--model", "minicanvas"]
OUT_PNG = ["--out", "{T}/out.png"]
MC_SAE = ["--sae", "{F}/sae", "--hookpoint", HOOK]
CACHE = ["cache", "--model", "minicanvas", "--hookpoint", HOOK, "--prompts", "{F}/prompts.txt"]
CONCEPT = ["concept", "build", "moon", "--model", "minicanvas", "--sae", "{F}/sae",
           "--hookpoint", HOOK]  # fmt: skip

# (id, argv, what the one line must name)
CASES: list[tuple[str, list[str], str]] = [
    # -- generate: numbers ------------------------------------------------------------------
    ("generate-multiplier-nan", [*GEN, *OUT_PNG, "--multiplier", "nan"], "multiplier: got nan"),
    ("generate-multiplier-neg-inf", [*GEN, *OUT_PNG, "--multiplier", "-inf"], "multiplier"),
    ("generate-multiplier-huge", [*GEN, *OUT_PNG, "--multiplier", "-1e30"], "multiplier"),
    ("generate-multiplier-zero", [*GEN, *OUT_PNG, "--multiplier", "0"], "multiplier"),
    ("generate-guidance-nan", [*GEN, *OUT_PNG, "--guidance-scale", "nan"], "guidance_scale"),
    ("generate-no-guidance-with-cond-half", [*GEN, *OUT_PNG, "--guidance-scale", "1"],
     "guidance_scale"),  # fmt: skip
    ("generate-steps-zero", [*GEN, *OUT_PNG, "--num-inference-steps", "0"],
     "num_inference_steps"),  # fmt: skip
    ("generate-steps-text", [*GEN, *OUT_PNG, "--num-inference-steps", "many"],
     "num_inference_steps"),  # fmt: skip
    ("generate-height-huge", [*GEN, *OUT_PNG, "--height", "4096"], "height: got 4096"),
    ("generate-height-odd", [*GEN, *OUT_PNG, "--width", "100"], "width"),
    ("generate-seed-negative", [*GEN, *OUT_PNG, "--seed", "-1"], "seed"),
    ("generate-empty-concept", ["generate", "--erase", " ", "--prompt", "x", *OUT_PNG,
                                "--model", "minicanvas"], "erase_concept"),  # fmt: skip
    # -- generate: device, model --------------------------------------------------------------
    ("generate-device-cuda", [*GEN, *OUT_PNG, "--device", "cuda"], "device: got 'cuda'"),
    ("generate-device-bogus", [*GEN, *OUT_PNG, "--device", "gpu0"], "device"),
    ("generate-model-offline-hub", ["generate", "--erase", "cat", "--prompt", "x", *OUT_PNG,
                                    "--model", "someone/uncached-model", *MC_SAE],
     "--model minicanvas"),  # fmt: skip
    ("generate-sae-offline-hub", [*GEN, *OUT_PNG, "--sae", "someone/uncached-sae",
                                  "--hookpoint", HOOK], "someone/uncached-sae"),  # fmt: skip
    ("generate-model-nonsense", ["generate", "--erase", "cat", "--prompt", "x", *OUT_PNG,
                                 "--model", "no such model", *MC_SAE], "model"),  # fmt: skip
    ("generate-model-is-file", ["generate", "--erase", "cat", "--prompt", "x", *OUT_PNG,
                                "--model", "{F}/a_file.txt", *MC_SAE], "model"),  # fmt: skip
    ("generate-model-no-index", ["generate", "--erase", "cat", "--prompt", "x", *OUT_PNG,
                                 "--model", "{F}/not_a_model", *MC_SAE], "model_index.json"),
    ("generate-steps-over-schedule", ["generate", "--erase", "moon", "--prompt", "x", *OUT_PNG,
                                      "--model", "{F}/short_schedule", *MC_SAE,
                                      "--features", "{F}/feats/moon",
                                      "--num-inference-steps", "200"],
     "trained on 100 timesteps"),  # fmt: skip
    # -- generate: output ---------------------------------------------------------------------
    ("generate-out-suffix", [*GEN, "--out", "{T}/out.txt"], "out"),
    ("generate-out-is-folder", [*GEN, "--out", "{T}/folder.png"], "is a folder"),
    ("generate-out-under-a-file", [*GEN, "--out", "{F}/a_file.txt/out.png"], "is a file"),
    # -- generate: SAE files ------------------------------------------------------------------
    ("generate-sae-missing", [*GEN, *OUT_PNG, "--sae", "{F}/no_such_sae", "--hookpoint", HOOK],
     "sae"),  # fmt: skip
    ("generate-sae-truncated", [*GEN, *OUT_PNG, "--sae", "{F}/sae_truncated", "--hookpoint", HOOK],
     "sae.safetensors: not a readable safetensors file"),  # fmt: skip
    ("generate-sae-garbage", [*GEN, *OUT_PNG, "--sae", "{F}/sae_garbage", "--hookpoint", HOOK],
     "sae.safetensors"),  # fmt: skip
    ("generate-sae-mismatched", [*GEN, *OUT_PNG, "--sae", "{F}/sae_mismatched",
                                 "--hookpoint", HOOK], "the config implies"),  # fmt: skip
    ("generate-sae-cfg-garbage", [*GEN, *OUT_PNG, "--sae", "{F}/sae_cfg_garbage",
                                  "--hookpoint", HOOK], "cfg.json"),  # fmt: skip
    ("generate-sae-cfg-not-utf8", [*GEN, *OUT_PNG, "--sae", "{F}/sae_cfg_latin1",
                                   "--hookpoint", HOOK], "cfg.json"),  # fmt: skip
    ("generate-sae-empty-folder", [*GEN, *OUT_PNG, "--sae", "{F}/sae_empty", "--hookpoint", HOOK],
     "holds no SAE checkpoint"),  # fmt: skip
    ("generate-sae-wrong-width", [*GEN, *OUT_PNG, "--sae", "{F}/sae_narrow", "--hookpoint", HOOK],
     "reads 32 channels"),  # fmt: skip
    ("generate-hookpoint-absent-from-sae", [*GEN, *OUT_PNG, "--sae", "{F}/sae",
                                            "--hookpoint", "unet.mid_block.attentions.0"],
     "hookpoint"),  # fmt: skip
    ("generate-hookpoint-not-a-module", [*GEN, *OUT_PNG, "--sae", "{F}/sae/" + HOOK,
                                         "--hookpoint", "unet.up_blocks.7.attentions.0"],
     "not a module of minicanvas"),  # fmt: skip
    # -- generate: features -------------------------------------------------------------------
    ("generate-features-missing", [*GEN, *OUT_PNG, *MC_SAE, "--features", "{F}/no_such/moon"],
     "features"),  # fmt: skip
    ("generate-features-truncated", [*GEN, *OUT_PNG, *MC_SAE,
                                     "--features", "{F}/feats_truncated/moon"],
     "moon.safetensors"),  # fmt: skip
    ("generate-features-not-utf8", [*GEN, *OUT_PNG, *MC_SAE, "--features", "{F}/feats_latin1/moon"],
     "moon.json: not UTF-8"),  # fmt: skip
    ("generate-features-no-json", [*GEN, *OUT_PNG, *MC_SAE, "--features", "{F}/feats_no_json/moon"],
     "moon.json does not exist"),  # fmt: skip
    ("generate-features-nan", [*GEN, *OUT_PNG, *MC_SAE, "--features", "{F}/feats_nan"],
     "NaN or infinite"),  # fmt: skip
    ("generate-features-beyond-sae", [*GEN, *OUT_PNG, *MC_SAE, "--features",
                                      "{F}/feats_beyond/moon"], "select latent"),  # fmt: skip
    ("generate-features-other-hookpoint", [*GEN, *OUT_PNG, *MC_SAE, "--features",
                                           "{F}/feats_other_hook/moon"], OTHER_HOOK),
    ("generate-features-of-another-sae", [*GEN, *OUT_PNG, "--sae", "{F}/sae_other",
                                          "--hookpoint", HOOK, "--features", "{F}/feats/moon"],
     "were selected from SAE"),  # fmt: skip
    # -- cache --------------------------------------------------------------------------------
    ("cache-prompts-not-utf8", ["cache", "--model", "minicanvas", "--hookpoint", HOOK,
                                "--prompts", "{F}/prompts_latin1.txt", "--out", "{T}/acts"],
     "prompts_latin1.txt: not UTF-8"),  # fmt: skip
    ("cache-prompts-missing", ["cache", "--model", "minicanvas", "--hookpoint", HOOK,
                               "--prompts", "{F}/none.txt", "--out", "{T}/acts"], "prompts"),
    ("cache-prompts-empty", ["cache", "--model", "minicanvas", "--hookpoint", HOOK,
                             "--prompts", "{F}/prompts_empty.txt", "--out", "{T}/acts"],
     "holds no prompts"),  # fmt: skip
    ("cache-prompts-suffix", ["cache", "--model", "minicanvas", "--hookpoint", HOOK,
                              "--prompts", "{F}/prompts.md", "--out", "{T}/acts"], "prompts"),
    ("cache-prompts-no-column", ["cache", "--model", "minicanvas", "--hookpoint", HOOK,
                                 "--prompts", "{F}/prompts_no_column.csv", "--out", "{T}/acts"],
     "no 'prompt' column"),  # fmt: skip
    ("cache-out-is-file", [*CACHE, "--out", "{F}/a_file.txt"], "out"),
    ("cache-hookpoint-not-a-module", ["cache", "--model", "minicanvas", "--hookpoint",
                                      "unet.down_blocks.9", "--prompts", "{F}/prompts.txt",
                                      "--out", "{T}/acts"], "hookpoint"),  # fmt: skip
    ("cache-steps-outside", [*CACHE, "--out", "{T}/acts", "--steps", "0-50"], "steps"),
    ("cache-device-cuda", [*CACHE, "--out", "{T}/acts", "--device", "cuda"], "device"),
    ("cache-shard-size-nan", [*CACHE, "--out", "{T}/acts", "--max-shard-mb", "nan"],
     "max_shard_mb"),  # fmt: skip
    ("cache-steps-over-schedule", ["cache", "--model", "{F}/short_schedule", "--hookpoint", HOOK,
                                   "--prompts", "{F}/prompts.txt", "--out", "{T}/acts",
                                   "--num-inference-steps", "500"], "num_inference_steps"),
    # -- concept build ------------------------------------------------------------------------
    ("concept-sae-truncated", ["concept", "build", "moon", "--model", "minicanvas", "--sae",
                               "{F}/sae_truncated", "--hookpoint", HOOK], "sae.safetensors"),
    ("concept-percentile-nan", [*CONCEPT, "--percentile", "nan"], "percentile"),
    ("concept-out-is-folder", [*CONCEPT, "--out", "{T}/folder"], "out"),
    ("concept-hookpoint-not-a-module", ["concept", "build", "moon", "--model", "minicanvas",
                                        "--sae", "{F}/sae/" + HOOK, "--hookpoint",
                                        "unet.up_blocks.8.attentions.0"], "hookpoint"),
    ("concept-device-cuda", [*CONCEPT, "--device", "cuda"], "device"),
    ("concept-prompts-missing", [*CONCEPT, "--prompts", "{F}/none.txt"], "prompts"),
    ("concept-others-not-utf8", [*CONCEPT, "--others", "{F}/prompts_latin1.txt"],
     "prompts_latin1.txt: not UTF-8"),  # fmt: skip
    # -- train --------------------------------------------------------------------------------
    ("train-out-is-file", ["train", "--activations", "{T}/acts", "--out", "{F}/a_file.txt"],
     "out"),  # fmt: skip
    ("train-lr-nan", ["train", "--activations", "{T}/acts", "--out", "{T}/sae", "--lr", "nan"],
     "lr"),  # fmt: skip
    ("train-labels-without-supervised", ["train", "--activations", "{T}/acts", "--out",
                                         "{T}/sae", "--labels", "{F}/labels_latin1.csv"],
     "supervised"),  # fmt: skip
    ("train-supervised-without-labels", ["train", "--activations", "{T}/acts", "--out", "{T}/sae",
                                         "--supervised"], "labels"),  # fmt: skip
    # -- ui -----------------------------------------------------------------------------------
    ("ui-port-out-of-range", ["ui", "--port", "70000"], "port"),
    ("ui-max-multiplier-nan", ["ui", "--max-multiplier", "nan"], "max_multiplier"),
    ("ui-guidance-inf", ["ui", "--guidance-scale", "inf"], "guidance_scale"),
    ("ui-bad-host", ["ui", "--host", "no-such-host.invalid", "--port", "{P}"], "host"),
    ("ui-foreign-address", ["ui", "--host", "192.0.2.1", "--port", "{P}"], "host"),
    ("ui-device-cuda", ["ui", "--device", "cuda", "--port", "{P}"], "device"),
    ("ui-sae-garbage", ["ui", "--sae", "{F}/sae_garbage", "--hookpoint", HOOK, "--port", "{P}"],
     "sae.safetensors"),  # fmt: skip
    # -- convert ------------------------------------------------------------------------------
    ("convert-input-missing", ["convert", "stats", "{F}/none.pkl", "--out", "{T}/stats"], "input"),
    ("convert-out-is-file", ["convert", "stats", "{F}/prompts.txt", "--out", "{F}/a_file.txt"],
     "out"),  # fmt: skip
    ("convert-untrusted-pickle", ["convert", "params", "{F}/prompts.txt", "--out",
                                  "{T}/params.json"], "trust"),  # fmt: skip
    # -- demo, minicanvas ---------------------------------------------------------------------
    ("demo-out-suffix", ["demo", "--out", "{T}/demo.jpg"], "out"),
    ("demo-steps-zero", ["demo", "--steps", "0", "--out", "{T}/demo.png"], "steps"),
    ("tune-trials-zero", ["tune", "--concept", "moon", "--trials", "0", "--out", "{T}/m.json"],
     "trials"),  # fmt: skip
    ("tune-guidance-inf", ["tune", "--concept", "moon", "--guidance-scale", "inf", "--out",
                           "{T}/m.json"], "guidance_scale"),  # fmt: skip
    ("tune-test-seed", ["tune", "--concept", "moon", "--out", "{T}/m.json", "--prompt-set",
                        "{F}/prompts.txt"], "prompt"),  # fmt: skip
    ("minicanvas-bench-guidance-nan", ["minicanvas", "bench", "--guidance-scale", "nan",
                                       "--out", "{T}/bench"], "guidance_scale"),  # fmt: skip
    ("minicanvas-bench-steps-zero", ["minicanvas", "bench", "--num-inference-steps", "0",
                                     "--out", "{T}/bench"], "num_inference_steps"),  # fmt: skip
    ("generate-recipe-missing", ["generate", "--recipe", "{T}/none.json", "--prompt", "a",
                                 "--out", "{T}/a.png"], "recipe"),  # fmt: skip
    ("bench-perf-unknown", ["bench", "perf", "--only", "erase,bogus"], "only"),
]


def _fill(argv: list[str], files: Path, tmp: Path) -> list[str]:
    port = str(free_port())
    return [
        a.replace("{F}", str(files)).replace("{T}", str(tmp)).replace("{P}", port) for a in argv
    ]


def assert_one_line_refusal(command: str, code: int, err: str, names: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"saeuron {command}: error: "), err
    assert names in lines[0], err


@pytest.mark.parametrize(("argv", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_any_work(argv, names, files, tmp_path, capsys) -> None:
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.safetensors").mkdir()
    before, fixtures = tree(tmp_path), tree(files)
    code = main(_fill(argv, files, tmp_path))
    assert_one_line_refusal(argv[0], code, capsys.readouterr().err, names)
    assert tree(tmp_path) == before and tree(files) == fixtures
    assert not leftovers(tmp_path)


def test_port_in_use_is_refused_before_the_model_loads(files, tmp_path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["ui", "--port", str(port)])
    err = capsys.readouterr().err
    assert_one_line_refusal("ui", code, err, f"port: {port} is in use")
    assert "serving on" not in err


def test_exposed_host_warns_at_start(monkeypatch, capsys) -> None:
    import saeuron.ui.server as server

    # The address is fine; the model then fails to load (forbidden here) after the warning.
    monkeypatch.setattr(server, "Studio", lambda cfg: (_ for _ in ()).throw(SystemExit(3)))
    with pytest.raises(SystemExit):
        main(["ui", "--host", "0.0.0.0", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert "exposes the page to every machine" in err and "serving on" not in err


def test_debug_shows_the_traceback_of_a_user_error(files, tmp_path) -> None:
    argv = _fill([*GEN, *OUT_PNG, "--sae", "{F}/sae_truncated", "--hookpoint", HOOK], files,
                 tmp_path)  # fmt: skip
    with pytest.raises(Exception, match="not a readable safetensors file"):
        main(["--debug", *argv])


# -- eval configs --------------------------------------------------------------------------------


def _eval(tmp: Path, technique: dict | None = None, metric: dict | None = None, **top) -> dict:
    return {
        "output_dir": str(tmp / "run"),
        "technique": {"name": "saeuron", "config": {"erase_concept": "moon", "model": "minicanvas",
                                                   "device": "cpu", **(technique or {})}},
        "metric": {"name": "unlearncanvas", "config": {"target_seeds": 1, **(metric or {})}},
        **top,
    }  # fmt: skip


EVAL_CASES: list[tuple[str, dict | bytes | str, list[str], str]] = [
    ("eval-not-utf8", b'{"output_dir": "caf\xe9"}', [], "cfg.json: not UTF-8"),
    ("eval-invalid-json", "{ not json", [], "not valid JSON"),
    ("eval-unknown-key", {"output_dir": "x", "tecnique": {}}, [], "did you mean 'technique'"),
    ("eval-multiplier-nan", "T:multiplier=NaN", [], "technique.config.multiplier: got nan"),
    ("eval-set-multiplier-inf", "T:", ["--set", "multiplier=-inf"], "multiplier"),
    ("eval-steps-over-bound", "T:num_inference_steps=2000", [], "num_inference_steps"),
    ("eval-height-huge", "T:height=4096", [], "technique.config.height"),
    ("eval-sae-missing", "T:sae=/no/such/sae", [], "technique.config.sae"),
    ("eval-sae-truncated", f"T:sae={{F}}/sae_truncated;hookpoint={HOOK}", [], "sae.safetensors"),
    ("eval-hookpoint-not-a-module", "T:hookpoint=unet.up_blocks.6.attentions.0", [],
     "technique.config.hookpoint"),  # fmt: skip
    ("eval-features-other-sae",
     f"T:sae={{F}}/sae_other;hookpoint={HOOK};features={{F}}/feats/moon", [],
     "were selected from SAE"),  # fmt: skip
    ("eval-output-dir-is-file", "O:{F}/a_file.txt", [], "output_dir"),
    ("eval-metric-unknown", {"output_dir": "x", "technique": {"name": "none"},
                             "metric": {"name": "acuracy"}}, [], "metric"),  # fmt: skip
    ("eval-seed-negative", "S:-3", [], "seed"),
]

# What this machine lacks, not what the file says: --check warns, the run refuses.
EVAL_MACHINE_CASES: list[tuple[str, dict | bytes | str, list[str], str]] = [
    ("eval-device-cuda", "T:", ["--device", "cuda"], "device"),
    ("eval-metric-device-cuda", "M:device=cuda", [], "metric"),
]


def _eval_file(spec: dict | bytes | str, files: Path, tmp: Path) -> Path:
    path = tmp / "cfg.json"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
        return path
    if isinstance(spec, str) and spec[:2] in ("T:", "M:", "O:", "S:"):
        kind, _, body = spec.partition(":")
        body = body.replace("{F}", str(files))
        pairs = dict(p.split("=", 1) for p in body.split(";") if p) if kind in "TM" else {}
        values = {k: (float(v) if v in ("NaN", "-inf") else _number(v)) for k, v in pairs.items()}
        data = _eval(tmp)
        if kind == "T":
            data["technique"]["config"].update(values)
        elif kind == "M":
            data["metric"]["config"].update(values)
        elif kind == "O":
            data["output_dir"] = body
        else:
            data["seed"] = int(body)
        path.write_text(json.dumps(data))  # json writes NaN as the literal NaN
        return path
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        return value


@pytest.mark.parametrize(
    ("spec", "extra", "names"), [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES]
)
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_eval_config_refused_in_one_line(spec, extra, names, check, files, tmp_path, capsys):
    path = _eval_file(spec, files, tmp_path)
    before = tree(tmp_path)
    code = main(["eval", "-c", str(path), *extra, *(["--check"] if check else [])])
    assert_one_line_refusal("eval", code, capsys.readouterr().err, names)
    assert tree(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    ("spec", "extra", "names"),
    [c[1:] for c in EVAL_MACHINE_CASES],
    ids=[c[0] for c in EVAL_MACHINE_CASES],
)
def test_eval_machine_mismatch_warns_under_check_and_refuses_the_run(
    spec, extra, names, files, tmp_path, capsys
):
    path = _eval_file(spec, files, tmp_path)
    before = tree(tmp_path)
    assert main(["eval", "-c", str(path), *extra, "--check"]) == 0
    out = capsys.readouterr().out
    assert "warning: this machine: " in out and names in out
    code = main(["eval", "-c", str(path), *extra])
    assert_one_line_refusal("eval", code, capsys.readouterr().err, names)
    assert tree(tmp_path) == before and not leftovers(tmp_path)


def test_eval_folder_with_images_of_other_settings_is_refused(files, tmp_path, capsys) -> None:
    from saeuron.eval import parse_eval_config
    from saeuron.eval.runner import run_lock

    run = tmp_path / "run"
    (run / "unlearncanvas" / "images").mkdir(parents=True)
    (run / "unlearncanvas" / "images" / "00000.png").write_bytes(b"png")
    earlier = parse_eval_config(_eval(tmp_path, {"multiplier": -5.0}))
    (run / "run.json").write_text(json.dumps(run_lock(earlier)))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(_eval(tmp_path, {"multiplier": -20.0, "batch_size": 2})))
    before = tree(tmp_path)
    for check in ([], ["--check"]):
        code = main(["eval", "-c", str(path), *check])
        assert_one_line_refusal("eval", code, capsys.readouterr().err,
                                "technique.config.multiplier: -5.0 in the folder, -20.0 now")
        assert tree(tmp_path) == before
