"""saeuron env: versions, devices, caches and hub settings, offline, never the token."""

from __future__ import annotations

import json
import os
import socket

import pytest

import saeuron
import saeuron.cli.env as env_command
from saeuron.cli.main import main

SECRET = "hf_notarealtokenbutsecret0123456789"


@pytest.fixture
def no_network(monkeypatch) -> None:
    """Any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("saeuron env opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    cache = tmp_path / "saeuron-cache"
    (cache / "concepts").mkdir(parents=True)
    (cache / "concepts" / "moon.safetensors").write_bytes(b"x" * 1000)
    (cache / "top.json").write_bytes(b"y" * 24)
    monkeypatch.setenv("SAEURON_CACHE", str(cache))
    return cache


def env_json(capsys) -> dict:
    assert main(["env", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_offline(no_network, own_cache, capsys) -> None:
    report = env_json(capsys)
    assert report["saeuron"]["version"] == saeuron.__version__
    assert set(report) == {"saeuron", "python", "packages", "extras", "devices", "caches", "hub"}
    packages = report["packages"]
    assert list(packages)[:4] == ["torch", "diffusers", "transformers", "huggingface_hub"]
    import torch

    assert packages["torch"] == torch.__version__
    assert report["devices"]["cuda"]["available"] == torch.cuda.is_available()
    assert len(report["devices"]["cuda"]["gpus"]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    mine = report["caches"]["saeuron"]
    assert mine == {"path": str(own_cache), "set_by": "SAEURON_CACHE", "exists": True,
                    "size_bytes": 1024}  # fmt: skip
    # The test session runs offline (tests/conftest.py).
    assert report["hub"]["offline"] is True and report["hub"]["endpoint"].startswith("http")
    assert "dev" not in report["extras"]  # the tools' extra is no feature


def test_the_token_is_reported_set_and_never_printed(no_network, own_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    report = env_json(capsys)
    assert report["hub"]["token"] == {"set": True, "source": "HF_TOKEN"}
    assert SECRET not in json.dumps(report)
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert SECRET not in text and "token" in text and "set (HF_TOKEN)" in text


def test_no_token(no_network, own_cache, monkeypatch, capsys) -> None:
    for name in env_command.TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert env_json(capsys)["hub"]["token"] == {"set": False, "source": None}


def test_text_report_has_every_section(no_network, own_cache, capsys) -> None:
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    for section in ("saeuron:", "python:", "packages:", "extras:", "devices:", "caches:", "hub:"):
        assert f"\n{section}" in f"\n{text}", section
    assert f"{own_cache} (from SAEURON_CACHE): 1.0 KiB" in text
    assert saeuron.__version__ in text


def test_a_missing_extra_is_reported_not_installed(no_network, own_cache, monkeypatch, capsys):
    monkeypatch.setattr(
        env_command,
        "_requirements",
        lambda: [("torch", None), ("gradio", "ui"), ("surely-not-installed-pkg", "ui")],
    )
    report = env_json(capsys)
    assert report["extras"]["ui"]["installed"] is False
    assert report["extras"]["ui"]["packages"]["surely-not-installed-pkg"] is None


def test_folder_size_counts_files_once_and_survives_missing_folders(tmp_path) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "a").write_bytes(b"z" * 10)
    (tmp_path / "snapshots").mkdir()
    os.symlink(tmp_path / "blobs" / "a", tmp_path / "snapshots" / "a")
    os.symlink(tmp_path / "blobs", tmp_path / "snapshots" / "dir")
    assert env_command.folder_size(tmp_path) == 10
    assert env_command.folder_size(tmp_path / "absent") == 0


def test_help_lists_json(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["env", "--help"])
    assert "--json" in capsys.readouterr().out
