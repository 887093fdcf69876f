"""P4D (Chin et al., ICML 2024): prompts optimised so the erased model draws the concept.

For a prompt that shows the concept, ``length`` free tokens are optimised so that the
technique's guided noise prediction with the adversarial prompt matches the unerased model's
with the original prompt, on noised latents of the unerased model's own image of it:

    min_P  E_t,eps || eps_erased(x_t, t, P) - eps_unerased(x_t, t, prompt) ||^2

The tokens are soft embeddings projected to the nearest vocabulary entry at every step and
trained straight through (PEZ, as P4D does), with AdamW. The prediction goes through the
technique under test, erasure included (white box), so what is found is an attack on it.
This is P4D-N (all tokens free); P4D-K's interleaving is not implemented.

UnlearnDiffAtk (Zhang et al., ECCV 2024) shares the machinery: ``length`` (5) prefix tokens
before the prompt, optimised so the erased model's conditional noise prediction recovers the
noise added to the unerased image (the diffusion model as its own classifier).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.eval.attacks.ring_a_bell import TextEncoder


@dataclass(frozen=True)
class P4dSettings:
    length: int = 16
    iterations: int = 200
    lr: float = 0.1
    weight_decay: float = 0.1
    num_inference_steps: int = 20
    guidance_scale: float = 7.5


@contextlib.contextmanager
def _injected(embedding: Any, positions: slice, values: Callable[[], Tensor]) -> Iterator[None]:
    """Replace the token embeddings at ``positions`` by ``values()`` while inside."""

    def hook(module: Any, args: Any, output: Tensor) -> Tensor:
        new = output.clone()
        new[:, positions] = values().to(output.dtype)
        return new

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def noise_predictions(
    pipe: Any, latents: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float
) -> tuple[Tensor, Tensor]:
    """(guided, conditional) noise predictions, computed as the pipeline computes them: one
    [uncond; cond] batch, so an erasure that edits the conditional half sees what it expects."""
    pipe._guidance_scale = guidance  # what do_classifier_free_guidance reads (erase hooks too)
    batch = pipe.scheduler.scale_model_input(torch.cat([latents, latents]), t)
    eps = pipe.unet(batch, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    u, c = eps.chunk(2)
    return u + guidance * (c - u), c


def guided_noise(
    pipe: Any, latents: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float
) -> Tensor:
    return noise_predictions(pipe, latents, t, cond, uncond, guidance)[0]


def soft_prompt_attack(
    technique: Any,
    prompts: Sequence[str],
    settings: P4dSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
    objective: str = "match",
    prefix: bool = False,
    desc: str = "p4d",
) -> list[dict[str, Any]]:
    """Free tokens optimised through ``technique`` (needs ``pipe`` and ``erasing()``, and
    ``negative`` when it guides away from a negative prompt), one search per prompt.

    ``objective="match"`` (P4D): the erased guided prediction for the free tokens against
    the unerased one for the prompt. ``objective="noise"`` (UnlearnDiffAtk): the erased
    conditional prediction for ``free tokens + prompt`` (``prefix=True``) against the noise
    that was added. Noised latents come from the unerased model's image of each prompt.
    """
    pipe = technique.pipe
    encoder = TextEncoder(pipe, forbidden_words)
    device = encoder.device
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = encoder.vocabulary.to(device)
    unit = F.normalize(table[allowed].float(), dim=-1)
    for p in (*pipe.unet.parameters(), *pipe.text_encoder.parameters()):
        p.requires_grad_(False)
    negative = getattr(technique, "negative", None)
    with torch.no_grad():
        uncond_plain = encoder.prompts([""]).to(device)
        uncond_erased = encoder.prompts([negative]).to(device) if negative else uncond_plain
    n = settings.length
    found = []
    for i, prompt in enumerate(tqdm(list(prompts), desc=desc, unit="prompt", leave=False)):
        gen = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            x0 = pipe(
                prompt, num_inference_steps=settings.num_inference_steps,
                guidance_scale=settings.guidance_scale, generator=gen, output_type="latent",
            ).images  # fmt: skip
            target_cond = encoder.prompts([prompt]).to(device)
        # pipe() resets the schedule; the hooks map timesteps to steps with it.
        pipe.scheduler.set_timesteps(settings.num_inference_steps)
        tail = pipe.tokenizer(prompt, add_special_tokens=False).input_ids if prefix else []
        tail = tail[: encoder.length - 2 - n]
        template = torch.tensor([[0] * n + tail], dtype=torch.long)
        start = allowed[torch.randint(len(allowed), (n,), generator=gen).to(device)]
        soft = table[start].clone().float().requires_grad_(True)
        optimiser = torch.optim.AdamW([soft], lr=settings.lr, weight_decay=settings.weight_decay)
        best: tuple[float, Tensor] = (float("inf"), start.cpu())
        for _ in range(settings.iterations):
            # The nearest allowed token (cosine) of each soft embedding.
            hard = allowed[(F.normalize(soft.detach(), dim=-1) @ unit.T).argmax(-1)]
            # Straight through: the forward pass sees the hard tokens, the gradient the soft.
            straight = soft + (table[hard].float() - soft).detach()
            k = int(torch.randint(len(pipe.scheduler.timesteps), (1,), generator=gen))
            t = pipe.scheduler.timesteps[k]
            noise = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
            x_t = pipe.scheduler.add_noise(x0, noise, t.reshape(1))
            with _injected(
                pipe.text_encoder.get_input_embeddings(),
                slice(1, n + 1),
                lambda s=straight: s.unsqueeze(0),
            ):
                cond = encoder.tokens_with_grad(template.to(device))
            with technique.erasing():
                guided, conditional = noise_predictions(
                    pipe, x_t, t, cond, uncond_erased, settings.guidance_scale
                )
            if objective == "match":
                with torch.no_grad():
                    target = guided_noise(
                        pipe, x_t, t, target_cond, uncond_plain, settings.guidance_scale
                    )
                loss = F.mse_loss(guided.float(), target.float())
            else:
                loss = F.mse_loss(conditional.float(), noise.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            if value < best[0]:
                best = (value, hard.detach().cpu())
        free = encoder.decode(best[1])
        found.append(
            {"source": prompt, "prompt": f"{free} {prompt}".strip() if prefix else free,
             "tokens": best[1].tolist(), "loss": best[0]}
        )  # fmt: skip
    return found


def p4d(
    technique: Any,
    prompts: Sequence[str],
    settings: P4dSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """P4D-N: free tokens whose erased prediction matches the unerased one of the prompt."""
    return soft_prompt_attack(technique, prompts, settings, seed, forbidden_words)


def unlearn_diff_atk(
    technique: Any,
    prompts: Sequence[str],
    settings: P4dSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """UnlearnDiffAtk: a prefix that makes the erased model denoise the concept's image."""
    return soft_prompt_attack(
        technique, prompts, settings, seed, forbidden_words, objective="noise", prefix=True,
        desc="unlearndiffatk",
    )  # fmt: skip
