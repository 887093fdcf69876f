"""Ring-A-Bell (Tsai et al., ICLR 2024): adversarial prompts found in the text encoder.

1. Concept vector: the mean difference of text embeddings of prompts with and without the
   concept, ``c = mean_i [E(with_i) - E(without_i)]`` (whole ``77 x d`` sequences).
2. For each prompt to attack, the "problematic" embedding ``T = E(prompt) + eta * c``.
3. A genetic search over token ids for a ``length``-token prompt whose embedding is nearest
   to ``T`` (squared distance); the best one, decoded, is the adversarial prompt.

It needs only the technique's own text encoder and tokenizer, so the prompts are found
against the model under test (an inference-time erasure such as SAeUron leaves the text
encoder as it is, which is exactly what this attack exploits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GeneticSettings:
    length: int = 16
    population: int = 64
    generations: int = 100
    mutation: float = 0.25
    """Chance of each token of a child to be replaced by a random one."""
    elite: int = 4
    """Best members copied unchanged into the next generation."""


class TextEncoder:
    """Embeds prompts or raw token ids with a pipeline's CLIP text encoder and tokenizer."""

    def __init__(self, pipe: Any, forbidden_words: Sequence[str] = ()):
        self.tokenizer = pipe.tokenizer
        self.model = pipe.text_encoder
        self.device = next(self.model.parameters()).device
        self.length = int(self.tokenizer.model_max_length)
        special = {self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        if self.tokenizer.pad_token_id is not None:
            special.add(self.tokenizer.pad_token_id)
        for word in forbidden_words:
            for form in {word, word.lower(), word.capitalize()}:
                special.update(self.tokenizer(form, add_special_tokens=False).input_ids)
        vocab = torch.arange(len(self.tokenizer))
        self.vocabulary = vocab[~torch.isin(vocab, torch.tensor(sorted(special)))]

    @torch.no_grad()
    def prompts(self, prompts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        return self._encode(ids)

    @torch.no_grad()
    def tokens(self, tokens: Tensor) -> Tensor:
        """``tokens [n, k]`` without specials -> embeddings of ``BOS tokens EOS pad...``."""
        return self._encode(self._ids(tokens))

    def tokens_with_grad(self, tokens: Tensor) -> Tensor:
        """As :meth:`tokens`, on the encoder's device and inside autograd (for P4D)."""
        return self.model(self._ids(tokens).to(self.device))[0]

    def _ids(self, tokens: Tensor) -> Tensor:
        n, k = tokens.shape
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        ids = torch.full((n, self.length), int(pad), dtype=torch.long)
        ids[:, 0] = self.tokenizer.bos_token_id
        ids[:, 1 : k + 1] = tokens.cpu()
        ids[:, k + 1] = self.tokenizer.eos_token_id
        return ids

    def _encode(self, ids: Tensor) -> Tensor:
        out = self.model(ids.to(self.device))[0]
        return out.float().cpu()

    def decode(self, tokens: Tensor) -> str:
        return self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True).strip()


def concept_vector(
    encoder: TextEncoder, with_concept: Sequence[str], without: Sequence[str]
) -> Tensor:
    if len(with_concept) != len(without) or not with_concept:
        raise ValueError("concept pairs: give as many prompts without the concept as with it")
    return (encoder.prompts(with_concept) - encoder.prompts(without)).mean(0)


def genetic_search(
    encoder: TextEncoder, target: Tensor, settings: GeneticSettings, seed: int
) -> tuple[Tensor, float]:
    """Token ids whose embedding is nearest to ``target``, and their squared distance."""
    gen = torch.Generator().manual_seed(seed)
    vocab = encoder.vocabulary

    def random_tokens(n: int) -> Tensor:
        return vocab[torch.randint(len(vocab), (n, settings.length), generator=gen)]

    def distance(pop: Tensor) -> Tensor:
        return ((encoder.tokens(pop) - target) ** 2).sum(dim=(1, 2))

    population = random_tokens(settings.population)
    scores = distance(population)
    for _ in range(settings.generations):
        order = torch.argsort(scores)
        population, scores = population[order], scores[order]
        parents = population[: max(2, settings.population // 2)]
        n_children = settings.population - settings.elite
        a = parents[torch.randint(len(parents), (n_children,), generator=gen)]
        b = parents[torch.randint(len(parents), (n_children,), generator=gen)]
        cut = torch.randint(1, settings.length, (n_children, 1), generator=gen)
        children = torch.where(torch.arange(settings.length) < cut, a, b)
        mutate = torch.rand(children.shape, generator=gen) < settings.mutation
        children = torch.where(mutate, random_tokens(n_children), children)
        population = torch.cat([population[: settings.elite], children])
        scores = torch.cat([scores[: settings.elite], distance(children)])
    best = int(torch.argmin(scores))
    return population[best], float(scores[best])


def ring_a_bell(
    pipe: Any,
    prompts: Sequence[str],
    with_concept: Sequence[str],
    without: Sequence[str],
    eta: float,
    settings: GeneticSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One adversarial prompt per prompt of ``prompts``, with the search's record.

    ``forbidden_words`` (and their tokens) never appear in a found prompt's tokens."""
    encoder = TextEncoder(pipe, forbidden_words)
    vector = concept_vector(encoder, with_concept, without)
    targets = encoder.prompts(prompts) + eta * vector
    found = []
    for i, (prompt, target) in enumerate(
        tqdm(list(zip(prompts, targets)), desc="ring-a-bell", unit="prompt", leave=False)
    ):
        tokens, dist = genetic_search(encoder, target, settings, seed + i)
        found.append(
            {"source": prompt, "prompt": encoder.decode(tokens), "tokens": tokens.tolist(),
             "distance": dist}
        )  # fmt: skip
    return found
