"""Atomic writes and portable records."""

from __future__ import annotations

import json
from pathlib import Path

from saeuron.utils.io import atomic_write_json, make_json_portable, relative_paths


def test_paths_under_a_root_are_named_relative_to_it(tmp_path: Path) -> None:
    bundle, work = tmp_path / "bundle", tmp_path / "scratch" / "guided_work"
    record = {
        "sae": str(bundle / "guided" / "saes"),
        "nested": [{"capture": str(work / "guidance-x")}],
        "elsewhere": "/opt/data/prompts.txt",
        "plain": "guided/saes",
        "number": 3,
    }
    assert relative_paths(record, {"": bundle, "guided_work": work}) == {
        "sae": "guided/saes",
        "nested": [{"capture": "guided_work/guidance-x"}],
        "elsewhere": "/opt/data/prompts.txt",
        "plain": "guided/saes",
        "number": 3,
    }


def test_only_files_that_change_are_rewritten(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"sae": str(tmp_path / "saes")})
    atomic_write_json(tmp_path / "sub" / "b.json", {"sae": "saes"})
    before = (tmp_path / "sub" / "b.json").stat().st_mtime_ns
    assert make_json_portable(tmp_path, {"": tmp_path}) == 1
    assert json.loads((tmp_path / "a.json").read_text()) == {"sae": "saes"}
    assert (tmp_path / "sub" / "b.json").stat().st_mtime_ns == before
