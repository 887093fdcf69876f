"""The eval config: validation before anything loads, the plan, eval-unlearn's examples."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.evaluation import (
    EXAMPLES,
    ROOT,
    config,
)

from saeuron.cli.main import main
from saeuron.eval import load_eval_config, parse_eval_config
from saeuron.eval.metrics import METRICS
from saeuron.utils.config import ConfigError


def test_metric_concept_defaults_to_the_technique_concept(tmp_path) -> None:
    cfg = parse_eval_config(config(tmp_path, [{"name": "unlearncanvas"}]))
    assert cfg.metrics[0].config.concept == "moon"
    assert cfg.technique_name == "none" and cfg.seed == 0
    both = parse_eval_config(
        config(tmp_path, [{"name": "unlearncanvas"}, {"name": "unlearncanvas",
                                                      "config": {"concept": "dotted"}}])
    )  # fmt: skip
    assert [m.label for m in both.metrics] == ["unlearncanvas", "unlearncanvas_2"]
    assert both.metrics[1].config.concept == "dotted"


@pytest.mark.parametrize(
    ("mutate", "field", "hint"),
    [
        (lambda d: d.update(outptu_dir="x"), "outptu_dir", "output_dir"),
        (lambda d: d["technique"].update(name="saeuron", config={"multiplyer": -5}),
         "technique.config.multiplyer", "multiplier"),
        (lambda d: d["metrics"][0].update(name="unlearncanvass"), "metric", "unlearncanvas"),
        (lambda d: d["metrics"][0].update(config={"target_seed": 2}),
         "metrics[0].config.target_seed", "target_seeds"),
        (lambda d: d["technique"].update(name="saeuronn"), "technique", "saeuron"),
        # A misspelt old name points to the new one.
        (lambda d: d["technique"].update(name="saeuron", config={"cfg_halff": "both"}),
         "technique.config.cfg_halff", "guidance_half"),
    ],
)  # fmt: skip
def test_unknown_keys_and_names_are_rejected_with_did_you_mean(
    tmp_path, mutate, field, hint
) -> None:
    data = config(tmp_path, [{"name": "unlearncanvas"}])
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_eval_config(data)
    assert err.value.field == field and f"did you mean {hint!r}" in str(err.value)


def test_the_old_name_cfg_half_configures_the_technique_as_guidance_half(tmp_path) -> None:
    metrics = [{"name": "unlearncanvas"}]
    new = parse_eval_config(config(tmp_path, metrics, name="saeuron", guidance_half="both"))
    old = parse_eval_config(config(tmp_path, metrics, name="saeuron", cfg_half="both"))
    assert old.technique == new.technique and new.technique.guidance_half == "both"
    assert "cfg_half" not in old.to_dict()["technique"]["config"]
    both = config(tmp_path, metrics, name="saeuron", cfg_half="both", guidance_half="cond")
    with pytest.raises(ConfigError, match="given twice") as err:
        parse_eval_config(both)
    assert err.value.field == "technique.config.guidance_half"


def test_bad_values_name_their_field_before_anything_loads(tmp_path) -> None:
    bad = config(tmp_path, [{"name": "unlearncanvas", "config": {"concept": "cubism"}}])
    with pytest.raises(ConfigError, match=r"metrics\[0\]\.config\.concept.*knows objects"):
        parse_eval_config(bad)
    bad = config(tmp_path, [{"name": "unlearncanvas"}], name="saeuron", guidance_scale=1.0)
    with pytest.raises(ConfigError, match=r"technique\.config\.guidance_scale"):
        parse_eval_config(bad)
    data = config(tmp_path, [{"name": "unlearncanvas"}])
    data["metric"] = {"name": "unlearncanvas"}
    with pytest.raises(ConfigError, match="exactly one of 'metric'"):
        parse_eval_config(data)
    data = config(tmp_path, [{"name": "unlearncanvas"}])
    data["seed"] = "1"
    with pytest.raises(ConfigError, match="seed"):
        parse_eval_config(data)


def test_seed_example_metrics_we_ship_validate_unchanged(monkeypatch) -> None:
    # The ua_ira and clip_score entries of eval-unlearn's documented example, as written, from the
    # project root (their prompt CSVs ship in data/).
    monkeypatch.chdir(ROOT)
    data = json.loads((EXAMPLES / "saeuron_nudity_multi.json").read_text())
    data["metrics"] = [m for m in data["metrics"] if m["name"] in ("ua_ira", "clip_score")]
    cfg = parse_eval_config(data)
    ua_ira = cfg.metrics[1].config
    assert ua_ira.target_concept == "nudity" and ua_ira.retain_concept == "person"
    items = METRICS.get("ua_ira")(ua_ira).items(cfg.seed)
    assert sum(i.group == "target" for i in items) == 50
    assert sum(i.group == "retain" for i in items) == 20
    assert items[0].seed == 1000  # the CSV's evaluation_seed


def test_check_prints_the_plan_without_loading_models(
    tmp_path, capsys, forbid_model_loading
) -> None:
    path = tmp_path / "cfg.json"
    data = config(tmp_path, [{"name": "unlearncanvas", "config": {"target_seeds": 2}},
                             {"name": "clip_score", "config": {"limit": 5,
                                                               "clip_model": "no/such-clip"}}],
                  device="cpu")  # fmt: skip
    path.write_text(json.dumps(data))
    assert main(["eval", "-c", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "metric unlearncanvas: 110 images" in out  # 10 x 2 target + 90 retain
    assert "metric clip_score: 5 images" in out
    assert "warning: CLIP model no/such-clip" in out
    assert not (tmp_path / "run").exists()
    if not torch.cuda.is_available():
        # --check is about the file: a device this machine lacks is a warning there.
        data["technique"]["config"]["device"] = "cuda"
        path.write_text(json.dumps(data))
        assert main(["eval", "-c", str(path), "--check"]) == 0
        assert "warning: this machine: technique.config.device" in capsys.readouterr().out
        data["technique"]["config"]["device"] = "cpu"
    data["metrics"][0]["config"]["concept"] = "cubism"
    path.write_text(json.dumps(data))
    assert main(["eval", "-c", str(path), "--check"]) == 2
    assert "concept" in capsys.readouterr().err


def test_list_names_every_technique_and_metric(capsys) -> None:
    assert main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("saeuron", "none", "negative_prompt", *METRICS.names()):
        assert f"  {name} " in out


def test_yaml_configs_are_read(tmp_path) -> None:
    from saeuron.eval import load_eval_config

    path = tmp_path / "cfg.yaml"
    path.write_text(
        "output_dir: out\nseed: 3\ntechnique:\n  name: none\n  config: {model: minicanvas}\n"
        "metric:\n  name: unlearncanvas\n  config: {concept: star}\n"
    )
    cfg = load_eval_config(path)
    assert cfg.seed == 3 and cfg.metrics[0].config.concept == "star"


def test_seed_000_examples_validate_unchanged(monkeypatch, capsys) -> None:
    # As written, from the project root: every metric known, every key accepted.
    monkeypatch.chdir(ROOT)
    for name in ("saeuron_asr.json", "saeuron_nudity_multi.json", "saeuron_violence_multi.json"):
        path = EXAMPLES / name
        # They name CUDA and SD 1.4 from the hub: --check warns about what this machine
        # lacks (no CUDA, no network in tests), and plans the run on the bundled model on CPU.
        assert main(["eval", "-c", str(path), "--check"]) == 0, name
        assert "warning: this machine: " in capsys.readouterr().out or torch.cuda.is_available()
        argv = ["eval", "-c", str(path), "--check", "--device", "cpu", "--set", "model=minicanvas"]
        assert main(argv) == 0, name
        out = capsys.readouterr().out
        assert "images in all" in out
    cfg = load_eval_config(EXAMPLES / "saeuron_nudity_multi.json", {"model": "minicanvas"}, "cpu")
    assert cfg.technique.device == "cpu" and cfg.technique.model == "minicanvas"
    assert {m.config.device for m in cfg.metrics} == {"cpu"}
    fid = next(m.config for m in cfg.metrics if m.name == "fid")
    assert fid.reference == "minicanvas"
