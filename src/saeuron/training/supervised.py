"""SAEmnesia's supervised SAE (docs/method.md, section 6): one latent per concept, by training.

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

Labels are per image: ``labels[i, c] = 1`` when image ``i`` shows concept ``c``. From a
capture folder, an "image" is one prompt at one denoising step (its tokens at the hookpoint),
labelled by a CSV naming each prompt's concepts (:func:`read_labels`);
:func:`train_supervised` (``saeuron train --supervised``) runs the whole chain and writes
the SAE with one feature file per concept: its latent, at every step.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.erasure.concepts.select import contrastive_scores
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.sae import Sae
from saeuron.training.shards import ActivationShards
from saeuron.training.supervised_config import SupervisedSettings, SupervisedTrainConfig
from saeuron.utils.config import ConfigError
from saeuron.utils.devices import resolve_device
from saeuron.utils.io import atomic_write_json
from saeuron.utils.text import read_text

# The settings are re-exported from the torch-free module that --help reads.
__all__ = [
    "NO_CONCEPT",
    "ImageGroups",
    "SupervisedSettings",
    "SupervisedTrainConfig",
    "assign_latents",
    "concept_features",
    "finetune",
    "group_stats",
    "load_image_groups",
    "read_labels",
    "train_supervised",
]

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
    x_in, mean, std = sae.standardise(x)
    pre = sae.pre_acts(x_in)
    top = sae.select_topk(pre)
    dense = pre.new_zeros(pre.shape).scatter(-1, top.top_indices, top.top_acts)
    x_hat = sae.unstandardise(sae.decode(top.top_acts, top.top_indices), mean, std)
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


# -- from a capture folder ------------------------------------------------------------------

NO_CONCEPT = ("", "none", "-")


def read_labels(
    path: str | Path, n_prompts: int | None = None, prompts_sha256: str | None = None
) -> tuple[list[str], dict[str, str], Tensor]:
    """Concepts, their kinds, and ``labels [prompts, concepts]`` from a labels CSV.

    One row per captured prompt, in capture order; every column but ``prompt`` is a kind
    (``object``, ``style``, ...) whose cell names the prompt's concept of that kind (several
    joined by ``;``, empty for none). When the CSV has a ``prompt`` column it must be the
    captured prompt list itself (checked against the capture's hash), so a shifted row cannot
    label the wrong images.
    """
    path = Path(path)
    # The one reader of users' text files: UTF-8 (a BOM allowed), else one line naming it.
    reader = csv.DictReader(io.StringIO(read_text(path, "labels"), newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    kinds_cols = [h for h in header if h and h != "prompt"]
    if not kinds_cols:
        raise ConfigError(
            "labels",
            f"{path} needs at least one concept column besides 'prompt' (e.g. "
            f"object,style); got columns {header}",
        )
    if n_prompts is not None and len(rows) != n_prompts:
        raise ConfigError(
            "labels", f"{path} has {len(rows)} rows; the capture holds {n_prompts} prompts"
        )
    if "prompt" in header and prompts_sha256 is not None:
        digest = hashlib.sha256("\n".join(r["prompt"] for r in rows).encode("utf-8")).hexdigest()
        if digest != prompts_sha256:
            raise ConfigError(
                "labels",
                f"the prompt column of {path} is not the captured prompt list "
                "(same prompts, same order)",
            )
    kinds: dict[str, str] = {}
    for row in rows:
        for kind in kinds_cols:
            for name in row.get(kind, "").split(";"):
                name = name.strip()
                if name.lower() in NO_CONCEPT:
                    continue
                if kinds.setdefault(name, kind) != kind:
                    raise ConfigError(
                        "labels",
                        f"concept {name!r} appears under both {kinds[name]!r} and {kind!r}",
                    )
    concepts = sorted(kinds, key=lambda c: (kinds_cols.index(kinds[c]), c))
    if len(concepts) < 2:
        raise ConfigError("labels", f"{path} names {len(concepts)} concept(s); need at least 2")
    labels = torch.zeros(len(rows), len(concepts))
    column = {c: i for i, c in enumerate(concepts)}
    for i, row in enumerate(rows):
        for kind in kinds_cols:
            for name in row.get(kind, "").split(";"):
                if name.strip() in column:
                    labels[i, column[name.strip()]] = 1.0
    return concepts, kinds, labels


@dataclass
class ImageGroups:
    """A capture regrouped by image: one prompt at one step, all its tokens."""

    acts: Tensor
    """``[images, tokens, d_in]`` float32."""
    labels: Tensor
    """``[images, concepts]`` 0/1."""
    steps: Tensor
    """``[images]`` schedule index of each image's step."""
    concepts: list[str]
    kinds: dict[str, str]
    manifest: dict[str, Any]


def load_image_groups(folder: str | Path, labels_path: str | Path) -> ImageGroups:
    """Every token of a capture grouped by (prompt, step), with the labels of its prompt."""
    shards = ActivationShards(folder)
    m = shards.manifest
    if m.get("guidance_half") == "both" and float(m.get("guidance_scale", 0)) > 1:
        raise ConfigError(
            "activations",
            f"{folder} was captured with guidance_half='both': an image's tokens would "
            "mix the unconditional half, which shows no concept; capture with guidance_half='cond'",
        )
    concepts, kinds, prompt_labels = read_labels(
        labels_path, int(m["n_prompts"]), m.get("prompts_sha256")
    )
    acts, prompts, steps = [], [], []
    for shard in shards.shards:
        acts.append(shards.load(shard).float())
        prompts.append(shards.load(shard, "prompt").long())
        steps.append(shards.load(shard, "step").long())
    x, p, st = torch.cat(acts), torch.cat(prompts), torch.cat(steps)
    n_steps = int(st.max()) + 1
    key = p * n_steps + st
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    if not bool((counts == counts[0]).all()):
        raise ConfigError(
            "activations",
            f"images of {folder} hold different numbers of tokens "
            f"({int(counts.min())} to {int(counts.max())}); cannot group them",
        )
    tokens = int(counts[0])
    grouped = x[order].reshape(len(keys), tokens, x.shape[-1])
    return ImageGroups(
        acts=grouped,
        labels=prompt_labels[keys // n_steps],
        steps=keys % n_steps,
        concepts=concepts,
        kinds=kinds,
        manifest=m,
    )


@torch.no_grad()
def group_stats(sae: Sae, groups: ImageGroups, batch_images: int = 256) -> dict[str, ConceptStats]:
    """Per-step statistics of every labelled concept under ``sae`` (TopK codes)."""
    step_values = sorted(int(s) for s in torch.unique(groups.steps))
    row_of = {s: i for i, s in enumerate(step_values)}
    n, t, d = groups.acts.shape
    means = torch.zeros(n, sae.num_latents)
    active = torch.zeros(n, sae.num_latents)
    for start in range(0, n, batch_images):
        x = groups.acts[start : start + batch_images].to(sae.device, sae.dtype)
        dense = sae.encode_dense(x.reshape(-1, d)).float().reshape(x.shape[0], t, -1).cpu()
        means[start : start + len(x)] = dense.mean(1)
        active[start : start + len(x)] = (dense > 0).float().mean(1)
    rows = torch.tensor([row_of[int(s)] for s in groups.steps])
    stats = {}
    m = groups.manifest
    for j, concept in enumerate(groups.concepts):
        mean = torch.zeros(len(step_values), sae.num_latents)
        frac = torch.zeros_like(mean)
        hit = groups.labels[:, j] == 1
        for r in range(len(step_values)):
            sel = hit & (rows == r)
            if bool(sel.any()):
                mean[r] = means[sel].mean(0)
                frac[r] = active[sel].mean(0)
        stats[concept] = ConceptStats(
            concept=concept,
            mean=mean,
            active_frac=frac,
            n_prompts=max(1, int(hit.sum()) // max(1, len(step_values))),
            timesteps=torch.tensor(step_values, dtype=torch.float32),
            meta={
                "steps": step_values,
                "hookpoint": m.get("hookpoint"),
                "num_inference_steps": m.get("num_inference_steps"),
                "model": m.get("model"),
            },
        )
    return stats


def concept_features(
    stats: dict[str, ConceptStats], assignment: dict[str, int], hookpoint: str | None = None
) -> dict[str, ConceptFeatures]:
    """Each concept as its one latent at every step (docs/method.md, section 6).

    Scale and threshold follow the unsupervised features, so one gamma means the same in
    both: the latent's mean on the concept's images, and the mean over all concepts.
    """
    pooled = torch.stack([s.mean for s in stats.values()]).mean(0)
    out = {}
    for concept, latent in assignment.items():
        target = stats[concept]
        n = target.num_steps
        out[concept] = ConceptFeatures(
            concept=concept,
            indices=torch.full((n, 1), latent, dtype=torch.long),
            mean=target.mean[:, latent : latent + 1].clone(),
            threshold=pooled[:, latent : latent + 1].clone(),
            timesteps=None,
            meta={
                "method": "supervised",
                "latent": latent,
                "hookpoint": hookpoint or target.meta.get("hookpoint"),
                "steps": target.steps,
                "num_inference_steps": target.meta.get("num_inference_steps"),
                "model": target.meta.get("model"),
            },
        )
    return out


def train_supervised(cfg: SupervisedTrainConfig) -> tuple[Sae, Path]:
    """Assign, fine-tune, write ``OUT/<hookpoint>/`` with ``features/<concept>`` beside it."""
    groups = load_image_groups(cfg.activations, cfg.labels)
    hookpoint = groups.manifest.get("hookpoint")
    device = resolve_device(cfg.device)
    sae = Sae.from_pretrained(cfg.init_sae, hookpoint=hookpoint, device=device)
    if sae.cfg.d_in != groups.acts.shape[-1]:
        raise ConfigError(
            "init_sae",
            f"the SAE reads {sae.cfg.d_in} channels; the capture holds {groups.acts.shape[-1]}",
        )
    assignment = assign_latents(group_stats(sae, groups))
    logger.info("assigned latents: %s", assignment)
    tuned, run = finetune(
        sae, groups.acts, groups.labels, groups.concepts, assignment, groups.kinds,
        cfg.settings(),
    )  # fmt: skip
    tuned.meta["supervised"]["kinds"] = groups.kinds
    tuned.meta["hookpoint"] = hookpoint
    folder = Path(cfg.out) / str(hookpoint)
    tuned.save_to_disk(folder)
    features = concept_features(group_stats(tuned, groups), assignment, hookpoint)
    for concept, feats in features.items():
        feats.meta[SAE_FINGERPRINT] = tuned.fingerprint()  # erasing checks it
        feats.save(folder / "features" / concept)
    atomic_write_json(
        folder / "supervised.json",
        {"assignment": assignment, "kinds": groups.kinds, "config": cfg.to_dict(),
         "history": run.history},
    )  # fmt: skip
    return tuned, folder
