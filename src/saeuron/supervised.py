"""SAEmnesia's supervised SAE (method.md section 6): one latent per concept, by training.

1. :func:`assign_latents`: each concept gets one latent, greedily by the unsupervised
   contrastive score (averaged over steps): the best (concept, latent) pair first, then the
   best among latents and concepts still free.
2. :func:`finetune`: the SAE is fine-tuned on images' tokens with

       loss = MSE(x, x_hat) / Var(x)                       reconstruction (FVU)
            + bce  * BCE(sigmoid(token-mean a_c), label_c)  each assigned latent <-> its label
            + corr * corr(object latents, style latents)^2  objects and styles kept apart
            + l1   * mean |a|                                sparsity

   over batches of whole images (the BCE needs an image's token mean), Adam, early stopping
   on a held-out share of the images. At inference each concept is its one latent.

Labels are per image: ``labels[i, c] = 1`` when image ``i`` shows concept ``c``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .concepts import ConceptStats, contrastive_scores
from .config import ConfigError
from .sae import Sae

logger = logging.getLogger(__name__)


def assign_latents(stats: dict[str, ConceptStats]) -> dict[str, int]:
    """One distinct latent per concept, greedily by each concept's score against the rest."""
    names = list(stats)
    if len(names) < 2:
        raise ConfigError("concepts", "assigning latents needs at least two concepts")
    scores = torch.stack(
        [contrastive_scores(stats[c], [stats[o] for o in names if o != c]).mean(0)
         for c in names]
    ).float()  # fmt: skip
    assigned: dict[str, int] = {}
    free = scores.clone()
    for _ in names:
        flat = int(torch.argmax(free))
        row, latent = divmod(flat, free.shape[1])
        assigned[names[row]] = latent
        free[row, :] = -torch.inf
        free[:, latent] = -torch.inf
    return {c: assigned[c] for c in names}


@dataclass
class SupervisedSettings:
    bce: float = 3.0
    corr: float = 0.1
    l1: float = 0.01
    lr: float = 5e-6
    batch_images: int = 128
    max_epochs: int = 50
    patience: int = 3
    heldout: float = 0.1
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _losses(
    sae: Sae,
    acts: Tensor,
    labels: Tensor,
    latents: Tensor,
    objects: Tensor,
    styles: Tensor,
    s: SupervisedSettings,
) -> dict[str, Tensor]:
    """``acts [images, tokens, d_in]``; ``labels [images, concepts]``; latents per concept."""
    n, t, d = acts.shape
    x = acts.reshape(-1, d).to(sae.dtype)
    x_in, mean, std = sae._standardise(x)
    pre = sae.pre_acts(x_in)
    top = sae.select_topk(pre)
    dense = pre.new_zeros(pre.shape).scatter(-1, top.top_indices, top.top_acts)
    x_hat = sae.decode(top.top_acts, top.top_indices)
    if std is not None:
        x_hat = x_hat * (std + 1e-5) + mean
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    # The concept latents' token means, before TopK: a latent that lost the top-k still
    # carries the signal the label asks for.
    concept_means = pre[:, latents].reshape(n, t, -1).mean(1)
    bce = F.binary_cross_entropy_with_logits(concept_means, labels.float())
    corr = pre.new_zeros(())
    if len(objects) and len(styles):
        a = concept_means[:, objects] - concept_means[:, objects].mean(0)
        b = concept_means[:, styles] - concept_means[:, styles].mean(0)
        cov = a.T @ b / max(n - 1, 1)
        norm = a.std(0, unbiased=True)[:, None] * b.std(0, unbiased=True)[None, :]
        corr = (cov / norm.clamp_min(1e-6)).pow(2).mean()
    l1 = dense.abs().mean()
    total = fvu + s.bce * bce + s.corr * corr + s.l1 * l1
    return {"total": total, "fvu": fvu, "bce": bce, "corr": corr, "l1": l1}


def finetune(
    sae: Sae,
    acts: Tensor,
    labels: Tensor,
    concepts: Sequence[str],
    assignment: dict[str, int],
    kinds: dict[str, str] | None = None,
    settings: SupervisedSettings | None = None,
) -> tuple[Sae, SupervisedSettings]:
    """A fine-tuned copy of ``sae`` (the original is left as it is) and the run's history."""
    s = settings or SupervisedSettings()
    if acts.ndim != 3 or labels.shape != (acts.shape[0], len(concepts)):
        raise ConfigError(
            "labels",
            f"acts {tuple(acts.shape)} must be [images, tokens, d_in] and labels "
            f"[images, {len(concepts)}], got {tuple(labels.shape)}",
        )
    missing = [c for c in concepts if c not in assignment]
    if missing:
        raise ConfigError("concepts", f"no latent assigned to {missing}")
    kinds = kinds or {}
    model = copy.deepcopy(sae).train()
    latents = torch.tensor([assignment[c] for c in concepts])
    objects = torch.tensor([i for i, c in enumerate(concepts) if kinds.get(c) == "object"])
    styles = torch.tensor([i for i, c in enumerate(concepts) if kinds.get(c) == "style"])
    gen = torch.Generator().manual_seed(s.seed)
    order = torch.randperm(acts.shape[0], generator=gen)
    n_held = max(1, int(round(s.heldout * len(order))))
    held, train = order[:n_held], order[n_held:]
    optimiser = torch.optim.Adam(model.parameters(), lr=s.lr)
    best_loss, best_state, waited = float("inf"), copy.deepcopy(model.state_dict()), 0
    device = model.device
    for epoch in tqdm(range(s.max_epochs), desc="supervised SAE", unit="epoch", leave=False):
        perm = train[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(perm), s.batch_images):
            idx = perm[start : start + s.batch_images]
            parts = _losses(model, acts[idx].to(device), labels[idx].to(device), latents,
                            objects, styles, s)  # fmt: skip
            optimiser.zero_grad()
            parts["total"].backward()
            optimiser.step()
            model.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            check = _losses(model, acts[held].to(device), labels[held].to(device), latents,
                            objects, styles, s)  # fmt: skip
        record = {"epoch": float(epoch), **{k: float(v) for k, v in check.items()}}
        s.history.append(record)
        logger.info("supervised SAE epoch %d: %s", epoch, record)
        if record["total"] < best_loss - 1e-6:
            best_loss, best_state, waited = record["total"], copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= s.patience:
                break
    model.load_state_dict(best_state)
    model.meta = {**sae.meta, "supervised": {"assignment": dict(assignment),
                                             "history": s.history}}  # fmt: skip
    return model.eval(), s
