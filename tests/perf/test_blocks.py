"""``saeuron bench blocks``: every block runs capture, training, features and erasure, and
the blocks come back ranked with their measured numbers."""

from __future__ import annotations

import json
import math

import pytest

from saeuron.cli.main import main
from saeuron.perf.blocks import BlockSweepConfig, sweep_blocks
from saeuron.utils.config import ConfigError


def test_more_prompts_than_the_neutral_set_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="train_prompts: .*<= 1"):
        BlockSweepConfig(model="tiny-flux", train_prompts=120, eval_prompts=10,
                         out=str(tmp_path))  # fmt: skip


def test_an_unknown_block_is_refused_before_any_capture(tmp_path) -> None:
    block = "transformer.transformer_blocks.9"
    with pytest.raises(ConfigError, match=f"hookpoint: '{block}'"):
        sweep_blocks(BlockSweepConfig(model="tiny-flux", blocks=[block], out=str(tmp_path)))
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_sweep_ranks_the_blocks_with_measured_numbers(tmp_path, capsys) -> None:
    blocks = ["transformer.transformer_blocks.0", "transformer.single_transformer_blocks.1"]
    assert main(["bench", "blocks", "--model", "tiny-flux", "--blocks", ",".join(blocks),
                 "--train-prompts", "4", "--eval-prompts", "2", "--num-inference-steps", "2",
                 "--max-shard-mb", "0.01", "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "blocks.json").read_text())
    rows = result["blocks"]
    assert sorted(r["block"] for r in rows) == sorted(blocks)
    assert [r["selectivity"] for r in rows] == sorted((r["selectivity"] for r in rows),
                                                       reverse=True)  # fmt: skip
    assert result["best"] == rows[0]["block"]
    for row in rows:
        assert row["effect"] > 0 and row["collateral"] >= 0
        assert math.isfinite(row["heldout_fvu"]) and row["heldout_fvu"] > 0
    table = (tmp_path / "blocks.md").read_text()
    assert table in capsys.readouterr().out and all(b in table for b in blocks)
