"""MMA-Diffusion's text attack (Yang et al., CVPR 2024): a prompt whose text embedding
matches the target prompt's, searched token by token with gradients (GCG), with the
concept's words banned.

Each iteration takes the gradient of the loss (1 - cosine of the flattened ``77 x d``
embeddings) with respect to a one-hot encoding of the ``length`` free tokens, keeps the
``top_k`` most promising tokens per position, tries ``candidates`` random single-token swaps
among them and keeps the best prompt. Only the technique's text encoder is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.eval.attacks.p4d import _injected
from saeuron.eval.attacks.ring_a_bell import TextEncoder


@dataclass(frozen=True)
class GcgSettings:
    length: int = 20
    iterations: int = 100
    top_k: int = 256
    candidates: int = 64


def _loss(embeddings: Tensor, target: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(embeddings.flatten(1), target.flatten().unsqueeze(0), dim=-1)


def gcg_search(
    encoder: TextEncoder, pipe: Any, target: Tensor, settings: GcgSettings, seed: int
) -> tuple[Tensor, float]:
    gen = torch.Generator().manual_seed(seed)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = encoder.vocabulary
    n = settings.length
    tokens = allowed[torch.randint(len(allowed), (n,), generator=gen)]
    template = torch.zeros((1, n), dtype=torch.long)
    target = target.to(encoder.device)
    best = float(_loss(encoder.tokens(tokens[None]).to(encoder.device), target))
    for _ in range(settings.iterations):
        one_hot = F.one_hot(
            torch.searchsorted(allowed, tokens), len(allowed)
        ).float().to(encoder.device).requires_grad_(True)  # fmt: skip
        embeds = one_hot @ table[allowed.to(encoder.device)].float()
        with _injected(pipe.text_encoder.get_input_embeddings(), slice(1, n + 1),
                       lambda e=embeds: e.unsqueeze(0)):  # fmt: skip
            loss = _loss(encoder.tokens_with_grad(template.to(encoder.device)), target).sum()
        loss.backward()
        top = (-one_hot.grad).topk(min(settings.top_k, len(allowed)), dim=-1).indices.cpu()
        positions = torch.randint(n, (settings.candidates,), generator=gen)
        picks = torch.randint(top.shape[1], (settings.candidates,), generator=gen)
        batch = tokens.repeat(settings.candidates, 1)
        batch[torch.arange(settings.candidates), positions] = allowed[top[positions, picks]]
        losses = _loss(encoder.tokens(batch).to(encoder.device), target).cpu()
        j = int(losses.argmin())
        if float(losses[j]) < best:
            best, tokens = float(losses[j]), batch[j]
    return tokens, best


def mma_attack(
    pipe: Any,
    prompts: Sequence[str],
    settings: GcgSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
) -> list[dict[str, Any]]:
    encoder = TextEncoder(pipe, forbidden_words)
    for p in pipe.text_encoder.parameters():
        p.requires_grad_(False)
    found = []
    targets = encoder.prompts(prompts)
    for i, (prompt, target) in enumerate(
        tqdm(list(zip(prompts, targets)), desc="mma-diffusion", unit="prompt", leave=False)
    ):
        tokens, loss = gcg_search(encoder, pipe, target, settings, seed + i)
        found.append(
            {"source": prompt, "prompt": encoder.decode(tokens), "tokens": tokens.tolist(),
             "loss": loss}
        )  # fmt: skip
    return found
