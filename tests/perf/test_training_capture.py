"""The training and capture benchmarks of ``saeuron bench perf``, on their smallest sizes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from saeuron.perf import BENCHMARKS, capture, training
from saeuron.sae import Sae, SaeConfig
from saeuron.training.sparse_step import sparse_forward

TINY = dataclasses.replace(
    training.QUICK, d_in=16, expansion_factor=8, k=4, batch_size=256, steps=6, warmup_steps=2,
    heldout_tokens=512, shard_tokens=512, n_features=64, active=3,
)


def test_registered() -> None:
    assert "training" in BENCHMARKS and "capture" in BENCHMARKS


def test_training_rows_measured_or_marked_missing() -> None:
    rows = training.rows_from(training.measure(TINY, "cpu"), "saeuron bench perf")
    assert [r.what for r in rows] == ["throughput ours/sparsify", "held-out FVU ours/sparsify"]
    for row in rows:
        assert math.isfinite(row.ours) and row.ours > 0
        if row.baseline is None:
            # Never a silent skip: the row says why and how to fix it.
            assert row.met is None and training.INSTALL_HINT in row.notes
        else:
            assert math.isfinite(row.baseline) and row.baseline > 0
            assert isinstance(row.met, bool)
    fvu = rows[1]
    assert 0 < fvu.ours < 1  # the SAE learned something in 6 steps


def test_training_without_sparsify_says_so(tmp_path: Path) -> None:
    result = training.measure(dataclasses.replace(TINY, steps=4, warmup_steps=1), "cpu",
                              sparsify_root=tmp_path / "nowhere")
    rows = training.rows_from(result, "cmd")
    assert all(r.met is None and r.baseline is None for r in rows)
    assert all("benchmarks/install_sparsify.sh" in r.notes for r in rows)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("n_dead", [0, 5])
def test_fast_training_forward_matches_sae_forward(n_dead: int, per_token: bool) -> None:
    # Trainer.step's sparse-gradient forward must give Sae.forward's loss and gradients.
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=16, expansion_factor=8, k=4))
    sae.b_dec.data.normal_()
    sae.encoder.bias.data.normal_(0, 0.1)
    x = torch.randn(200, 16) * 2 + 1
    dead = torch.zeros(sae.num_latents, dtype=torch.bool)
    dead[:n_dead] = True
    results = []
    for forward in (lambda: sae(x, dead_mask=dead, batch_topk=not per_token),
                    lambda: sparse_forward(sae, x, dead, per_token=per_token)):
        sae.zero_grad()
        out = forward()
        (out.fvu + 0.5 * out.auxk_loss).backward()
        kept = {(i, int(j)) for i in range(x.shape[0])
                for j, a in zip(out.latent_indices[i], out.latent_acts[i]) if a > 0}
        grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
        results.append((out, kept, grads))
    (ref, ref_kept, ref_grads), (fast, fast_kept, fast_grads) = results
    assert fast_kept == ref_kept
    assert torch.allclose(fast.fvu, ref.fvu, atol=1e-6)
    assert torch.allclose(fast.auxk_loss, ref.auxk_loss, atol=1e-6)
    assert (n_dead == 0) == (float(ref.auxk_loss.detach()) == 0.0)
    for name, grad in ref_grads.items():
        assert torch.allclose(fast_grads[name], grad, atol=1e-5), name


@pytest.mark.slow
def test_capture_rows() -> None:
    # Both captures at once (timings are not checked here): the test stays short.
    results = capture.measure((2, 4), "cpu", num_inference_steps=2, max_shard_mb=0.01, jobs=2)
    rows = capture.rows_from(results, "saeuron bench perf --only capture", "cpu", 2, 0.01, 32)
    by_what = {(r.what, r.unit): r for r in rows}
    for row in rows:
        assert math.isfinite(row.ours) and row.ours > 0 and row.command
    assert all(r["n_shards"] >= 2 for r in results)
    flat = by_what[("peak RSS 4/2 prompts", "MiB")]
    assert flat.ratio is not None and flat.met == (flat.ratio <= capture.FLAT_LIMIT)
    per_value = by_what[("bytes per stored value (fp16)", "bytes/value")]
    assert 2.0 <= per_value.ours <= 2.5
    assert by_what[("throughput, 4 prompts", "tokens/s")].ours > 0
