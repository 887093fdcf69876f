"""The one prompt reader."""

from __future__ import annotations

import pytest

from saeuron.utils.config import ConfigError
from saeuron.utils.prompts import read_prompt_rows as read_prompts


def test_prompt_files_read_seeds_and_reject_bad_input(tmp_path) -> None:
    good = tmp_path / "p.csv"
    good.write_text("Prompt,evaluation_seed,categories\na cat,7,x\n,8,y\na dog,,z\n")
    rows = read_prompts(good, "prompts_path")
    assert [(r.prompt, r.seed) for r in rows] == [("a cat", 7), ("a dog", None)]
    assert rows[0].extra == {"categories": "x"}
    bad = tmp_path / "bad.csv"
    bad.write_text("text\na cat\n")
    with pytest.raises(ConfigError, match="prompts_path.*no 'prompt' column"):
        read_prompts(bad, "prompts_path")
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(tmp_path / "none.csv", "prompts_path")
