"""Concept statistics straight from a labelled capture: no UNet run, every captured prompt.

:func:`saeuron.erasure.concepts.stats.collect_stats` samples a concept's prompts again to
read the SAE; a capture already holds those activations, one row per token with its prompt
and step. Given a CSV that names each captured prompt's concepts (the supervised SAE's
labels, e.g. columns ``object,style``), this encodes the capture once and averages, per
concept and step, the token-mean codes of the concept's prompts: the same
:class:`ConceptStats` (mean over prompts of the token-mean code, share of tokens where a
latent is active), from thousands of prompts at the cost of one SAE pass.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import torch

from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.sae import Sae
from saeuron.training.shards import ActivationShards
from saeuron.utils.errors import ConfigError
from saeuron.utils.text import read_text

logger = logging.getLogger(__name__)


@torch.no_grad()
def stats_from_capture(
    capture: str | Path,
    sae: Sae,
    labels: list[dict[str, str]],
    kind: str,
    chunk: int = 65536,
) -> dict[str, ConceptStats]:
    """Per concept named in column ``kind`` of ``labels`` (one row per captured prompt).

    Prompts with an empty ``kind`` cell (e.g. unstyled prompts for styles) count for no
    concept. Every image must hold the same number of tokens, so the mean over a concept's
    tokens is the mean over its prompts of the token means.
    """
    data = ActivationShards(capture)
    n_prompts = int(data.manifest.get("n_prompts", len(labels)))
    if len(labels) != n_prompts:
        raise ConfigError(
            "labels", f"{len(labels)} label rows for a capture of {n_prompts} prompts"
        )
    if not labels or kind not in labels[0]:
        have = sorted(labels[0]) if labels else []
        raise ConfigError("kind", f"got {kind!r}; the labels have the columns {have}")
    names = sorted({row[kind] for row in labels if row[kind]})
    if len(names) < 2:
        raise ConfigError("kind", f"column {kind!r} names fewer than two concepts")
    label = torch.tensor([names.index(row[kind]) if row[kind] else -1 for row in labels])
    steps = list(data.manifest["steps"])
    row_of = torch.full((max(steps) + 1,), -1, dtype=torch.long)
    row_of[torch.tensor(steps)] = torch.arange(len(steps))
    n_latents = sae.num_latents
    cells = len(names) * len(steps)
    sums = torch.zeros(cells, n_latents, dtype=torch.float64)
    active = torch.zeros(cells, n_latents, dtype=torch.float64)
    tokens = torch.zeros(cells, dtype=torch.float64)
    device = sae.device
    for shard in data.shards:
        # One read per shard (its checksum is verified once).
        tensors = data.read(shard)
        concept = label[tensors["prompt"].long()]
        keep = concept >= 0
        if not bool(keep.any()):
            continue
        x = tensors["activations"][keep]
        key = concept[keep] * len(steps) + row_of[tensors["step"].long()[keep]]
        for start in range(0, len(x), chunk):
            top = sae.encode(x[start : start + chunk].to(device, sae.dtype))
            dense = torch.zeros(top.top_acts.shape[0], n_latents, dtype=torch.float64)
            dense.scatter_(-1, top.top_indices.cpu(), top.top_acts.double().cpu())
            part = key[start : start + chunk]
            sums.index_add_(0, part, dense)
            active.index_add_(0, part, (dense > 0).double())
            tokens.index_add_(0, part, torch.ones(len(part), dtype=torch.float64))
    sums = sums.view(len(names), len(steps), n_latents)
    active = active.view(len(names), len(steps), n_latents)
    tokens = tokens.view(len(names), len(steps))
    timesteps = torch.tensor(
        data.manifest.get("timesteps", [float(s) for s in steps]), dtype=torch.float32
    )
    out = {}
    for i, name in enumerate(names):
        if bool((tokens[i] == 0).any()):
            raise ValueError(f"concept {name!r} has no tokens at some captured step")
        out[name] = ConceptStats(
            concept=name,
            mean=(sums[i] / tokens[i][:, None]).float(),
            active_frac=(active[i] / tokens[i][:, None]).float(),
            n_prompts=int((label == i).sum()),
            timesteps=timesteps,
            meta={
                "hookpoint": data.manifest.get("hookpoint"),
                "num_inference_steps": data.manifest.get("num_inference_steps"),
                "steps": steps,
                "guidance_scale": data.manifest.get("guidance_scale"),
                "activation_site": data.manifest.get("activation_site", "output"),
                "source": "capture",
                "capture": str(capture),
                "sae": sae.meta.get("source"),
            },
        )
    logger.info("statistics of %d concepts (%s) from %s", len(names), kind, capture)
    return out


def read_label_rows(path: str | Path) -> list[dict[str, str]]:
    """The label CSV as dict rows (cells stripped)."""
    text = read_text(path, "labels")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in rows]


__all__ = ["read_label_rows", "stats_from_capture"]
