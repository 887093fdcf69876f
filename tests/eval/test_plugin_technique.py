"""``saeuron eval`` with your own technique: ``module:Class`` named on the command line or in
Python is imported; named in a config file it is refused unless ``--trust-code``."""

from __future__ import annotations

import json

import pytest
from helpers.evaluation import ua_ira_config

from saeuron.cli.main import main
from saeuron.eval.config import parse_eval_config
from saeuron.eval.techniques import PluginConfig, build_technique
from saeuron.utils.errors import ConfigError

PLUGIN = "helpers.evaluation:PluginColour"


def test_a_plugin_named_by_the_caller_is_built_from_its_config_block(tmp_path):
    cfg = parse_eval_config(ua_ira_config(tmp_path), technique=PLUGIN)
    assert cfg.technique_name == PLUGIN and isinstance(cfg.technique, PluginConfig)
    assert cfg.technique.erase_concept == "nudity"
    technique = build_technique(cfg.technique_name, cfg.technique)
    assert type(technique).__name__ == "PluginColour"
    images = technique.generate(["a nude figure", "a cat"], [0, 1])
    assert [im.getpixel((0, 0))[0] > 100 for im in images] == [True, False]


def test_a_plugin_named_in_a_file_needs_trust(tmp_path):
    data = ua_ira_config(tmp_path)
    data["technique"]["name"] = PLUGIN
    with pytest.raises(ConfigError, match="^technique.name: .*--trust-code"):
        parse_eval_config(data)
    assert parse_eval_config(data, trust_code=True).technique_name == PLUGIN


def test_the_command_line_takes_a_plugin_and_refuses_a_file_that_names_one(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(ua_ira_config(tmp_path)))
    assert main(["eval", "-c", str(path), "--technique", PLUGIN, "--check"]) == 0
    assert "PluginColour" in capsys.readouterr().out
    data = ua_ira_config(tmp_path)
    data["technique"]["name"] = PLUGIN
    path.write_text(json.dumps(data))
    assert main(["eval", "-c", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-code" in err[0]
    assert main(["eval", "-c", str(path), "--check", "--trust-code"]) == 0
    assert main(["eval", "-c", str(path), "--technique", "no_such_module:X", "--check"]) == 2
    assert "cannot import" in capsys.readouterr().err
