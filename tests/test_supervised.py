"""SAEmnesia's supervised fine-tune on data where the concepts are known directions."""

from __future__ import annotations

import torch

from saeuron.concepts import ConceptStats
from saeuron.sae import Sae, SaeConfig
from saeuron.supervised import SupervisedSettings, assign_latents, finetune


def stats(name: str, mean: torch.Tensor) -> ConceptStats:
    return ConceptStats(concept=name, mean=mean[None], active_frac=torch.full_like(mean[None], .5),
                        n_prompts=4, timesteps=torch.zeros(1))  # fmt: skip


def test_assignment_is_greedy_and_distinct() -> None:
    base = torch.ones(16)
    a, b, c = base.clone(), base.clone(), base.clone()
    a[3], b[3], c[9] = 9.0, 8.0, 5.0  # a and b both want latent 3; a wants it more
    b[5] = 6.0
    got = assign_latents({"a": stats("a", a), "b": stats("b", b), "c": stats("c", c)})
    assert got["a"] == 3 and got["c"] == 9 and got["b"] == 5
    assert len(set(got.values())) == 3


def synthetic(n_images: int = 240, tokens: int = 8, d: int = 16, seed: int = 0):
    """Images whose tokens carry an object direction and a style direction, with labels."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(d, d, generator=gen))[0][:4] * 3.0
    obj = torch.randint(2, (n_images,), generator=gen)
    sty = torch.randint(2, (n_images,), generator=gen)
    acts = torch.randn(n_images, tokens, d, generator=gen) * 0.5
    acts += directions[obj][:, None, :] + directions[2 + sty][:, None, :]
    labels = torch.stack([obj == 0, obj == 1, sty == 0, sty == 1], dim=1).float()
    return acts, labels


def separation(sae: Sae, acts, labels, latents) -> float:
    """Mean gap between token-mean activations of labelled and unlabelled images."""
    with torch.no_grad():
        pre = sae.pre_acts(sae._standardise(acts.reshape(-1, acts.shape[-1]))[0])
    means = pre[:, latents].reshape(acts.shape[0], acts.shape[1], -1).mean(1)
    gaps = [(means[labels[:, j] == 1, j].mean() - means[labels[:, j] == 0, j].mean())
            for j in range(labels.shape[1])]  # fmt: skip
    return float(torch.stack(gaps).min())


def test_finetune_makes_each_assigned_latent_track_its_label() -> None:
    torch.manual_seed(0)
    acts, labels = synthetic()
    sae = Sae(SaeConfig(d_in=16, expansion_factor=4, k=4))
    concepts = ["o0", "o1", "s0", "s1"]
    # Deliberately arbitrary latents: the fine-tune has to make them mean their concepts.
    assignment = {"o0": 10, "o1": 20, "s0": 30, "s1": 40}
    kinds = {"o0": "object", "o1": "object", "s0": "style", "s1": "style"}
    latents = torch.tensor(list(assignment.values()))
    before = separation(sae, acts, labels, latents)
    weights = sae.W_dec.detach().clone()
    tuned, run = finetune(sae, acts, labels, concepts, assignment, kinds,
                          SupervisedSettings(lr=1e-2, batch_images=32, max_epochs=30))  # fmt: skip
    after = separation(tuned, acts, labels, latents)
    assert after > before + 0.5 and after > 0.5
    assert torch.equal(sae.W_dec, weights)  # the original SAE is left as it was
    first, last = run.history[0], min(run.history, key=lambda r: r["total"])
    assert last["bce"] < first["bce"]
    assert tuned.meta["supervised"]["assignment"] == assignment
