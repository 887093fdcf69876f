"""The sparse training step split over processes equals the step on the whole batch."""

from __future__ import annotations

import pytest
import torch
from helpers.ranks import run_ranks, thread_ranks

from saeuron.sae import Sae, SaeConfig
from saeuron.training.distributed import Processes
from saeuron.training.sparse_step import (
    _batch_topk_pairs,
    group_total_variance,
    sparse_forward,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_sae(d_in: int = 16, latents: int = 128, k: int = 4) -> Sae:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=d_in, num_latents=latents, k=k), dtype=torch.float32)
    with torch.no_grad():
        sae.b_dec.normal_()
    return sae


def split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == x.shape[0]
    return list(torch.split(x, sizes))


def whole_and_shares(
    sae: Sae, x: torch.Tensor, sizes: list[int], per_token: bool, dead: torch.Tensor | None
) -> tuple[dict, list[dict]]:
    """The whole-batch step's loss, kept pairs and gradients; and each share's."""

    def run(part: torch.Tensor, group: Processes | None, offset: int) -> dict:
        model = make_sae(sae.d_in, sae.num_latents, sae.cfg.k)
        model.load_state_dict(sae.state_dict())
        out = sparse_forward(model, part, dead, per_token=per_token, group=group)
        (out.fvu + out.auxk_loss).backward()
        kept = {
            (offset + t, int(i))
            for t in range(out.latent_indices.shape[0])
            for i, a in zip(out.latent_indices[t].tolist(), out.latent_acts[t].tolist())
            if a > 0
        }
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return {"fvu": out.fvu.detach(), "auxk": out.auxk_loss.detach(), "kept": kept,
                "grads": grads}

    whole = run(x, None, 0)
    parts = split(x, sizes)
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    ranks = thread_ranks(len(sizes))
    shares = run_ranks(ranks, lambda r: run(parts[r.rank], r, offsets[r.rank]))
    return whole, shares


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("sizes", [[60, 60], [100, 20], [50, 0, 70], [40, 41, 39]])
def test_shares_sum_to_the_whole_batch(sizes: list[int], per_token: bool) -> None:
    sae = make_sae()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(sum(sizes), 16, generator=gen) * 2 + 1
    dead = torch.zeros(128, dtype=torch.bool)
    dead[::3] = True  # AuxK on: its loss shares the batch's denominator too
    whole, shares = whole_and_shares(sae, x, sizes, per_token, dead)

    # Same kept (token, latent) pairs: BatchTopK's threshold is the whole batch's.
    assert set().union(*(s["kept"] for s in shares)) == whole["kept"]
    assert sum(len(s["kept"]) for s in shares) == len(whole["kept"])
    torch.testing.assert_close(sum(s["fvu"] for s in shares), whole["fvu"], rtol=1e-5, atol=0)
    torch.testing.assert_close(sum(s["auxk"] for s in shares), whole["auxk"], rtol=1e-5, atol=0)
    for name, grad in whole["grads"].items():
        summed = sum(s["grads"][name] for s in shares)
        torch.testing.assert_close(summed, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_threshold_without_a_useful_sample_falls_back_exactly() -> None:
    # k x latents so large that the sampled bound cannot be used: each process offers its
    # own top budget instead.
    sae = make_sae(d_in=8, latents=16, k=6)
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    whole, shares = whole_and_shares(sae, x, [12, 18], False, None)
    assert set().union(*(s["kept"] for s in shares)) == whole["kept"]


def test_one_process_group_matches_the_local_step() -> None:
    sae = make_sae(latents=4096, k=8)  # a sampled bound is used at this width
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pre = torch.relu(sae.encoder(x - sae.b_dec))
    rows, cols = _batch_topk_pairs(pre, 8)
    local = sparse_forward(sae, x, None)
    grouped = sparse_forward(sae, x, None, group=Processes(torch.device("cpu")))
    assert torch.equal(grouped.latent_indices, local.latent_indices)
    assert len(rows) == int((local.latent_acts > 0).sum())
    torch.testing.assert_close(grouped.fvu, local.fvu, rtol=1e-6, atol=0)
    n, tv = group_total_variance(x, Processes(torch.device("cpu")))
    assert n == 200
    torch.testing.assert_close(tv, (x - x.mean(0)).pow(2).sum(), rtol=1e-6, atol=0)
