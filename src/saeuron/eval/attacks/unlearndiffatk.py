"""UnlearnDiffAtk (Zhang et al., ECCV 2024): the diffusion model as its own classifier.

``length`` (5) prefix tokens are put before a prompt that names the concept and optimised so
that the erased model's conditional noise prediction for ``prefix + prompt`` recovers the
noise added to the unerased model's image of the prompt:

    min_P  E_eps || eps_erased(x_t, t, P + prompt) - eps ||^2

As in the paper's code, each prefix token is a point of the probability simplex over the
vocabulary (a relaxed one-hot, uniform at the start). A step samples one token per row from
it, embeds those tokens, and passes the gradient (clipped to [-1, 1]) straight through to
the relaxed rows; Adam (lr 0.01, weight decay 0.1) updates them and every row is projected
back onto the simplex. The training timesteps are visited in turn, ``timesteps`` of them
spread evenly over the training range, ``iterations`` steps at each; after each timestep
the most likely tokens form the prefix, the erased model draws ``prefix + prompt`` and the
detector judges it; the search stops at the first success. A prompt whose plain image is
already flagged is not attacked (the paper's code does the same).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.eval.attacks.p4d import (
    _injected,
    frozen,
    guidance_of,
    image_latent,
    noise_predictions,
    noised,
    sampling_steps,
    train_timesteps,
)
from saeuron.eval.attacks.ring_a_bell import TextEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlearnDiffSettings:
    length: int = 5
    timesteps: int = 50
    """Training timesteps visited in turn, spread evenly over the training range."""
    iterations: int = 40
    """Optimisation steps at each timestep; the detector is asked after them."""
    lr: float = 0.01
    weight_decay: float = 0.1


def attack_timesteps(num_train_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps spread evenly over ``[0, num_train_timesteps)``, each in the
    middle of its interval (10, 30, ..., 990 for 50 of 1000), in increasing order."""
    stride = max(1, num_train_timesteps // count)
    return list(range(stride // 2, num_train_timesteps, stride))[:count]


def project_simplex(v: Tensor) -> Tensor:
    """Each row of ``v`` projected (Euclidean) onto the probability simplex.

    The projection is ``max(v - theta, 0)`` with ``theta`` chosen so the row sums to 1; the
    sorted form below finds it exactly (the paper's code bisects for it)."""
    # In float64: a float32 running sum over a 49k-token vocabulary drifts by ~1e-5.
    w = v.double()
    u, _ = torch.sort(w, dim=-1, descending=True)
    cumulative = u.cumsum(-1) - 1
    k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
    support = (u - cumulative / k > 0).sum(-1, keepdim=True)
    theta = cumulative.gather(-1, support - 1) / support.to(w.dtype)
    return (w - theta).clamp_min(0).to(v.dtype)


def unlearn_diff_atk(
    technique: Any,
    prompts: Sequence[str],
    settings: UnlearnDiffSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
    flagged: Callable[[list[Any]], list[bool]] | None = None,
) -> list[dict[str, Any]]:
    """One prefixed prompt per prompt of ``prompts``, found through ``technique`` (``pipe``,
    ``erase()``, ``generate`` and ``unerased``).

    Prompt ``i`` is drawn with seed ``seed + i`` (before and after), the seed the metric
    samples it with. ``flagged`` is the detector; without it the search never stops early
    and every prompt is attacked."""
    with frozen(technique.pipe.unet, technique.pipe.text_encoder):
        return _search(technique, prompts, settings, seed, forbidden_words, flagged)


def _search(
    technique: Any,
    prompts: Sequence[str],
    settings: UnlearnDiffSettings,
    seed: int,
    forbidden_words: Sequence[str],
    flagged: Callable[[list[Any]], list[bool]] | None,
) -> list[dict[str, Any]]:
    pipe = technique.pipe
    encoder = TextEncoder(pipe, forbidden_words)
    device = encoder.device
    dtype = next(pipe.unet.parameters()).dtype
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = encoder.vocabulary.to(device)
    rows = table[allowed].float()
    guidance = guidance_of(technique)
    # The text encoder runs under the erasure too: an erasure inside it (an SAE on the
    # prompt's embeddings) is part of the model under attack.
    with torch.no_grad(), technique.erase():
        uncond = encoder.prompts([""]).to(device, dtype)
    n = settings.length
    timesteps = attack_timesteps(train_timesteps(pipe), settings.timesteps)
    found = []
    for i, prompt in enumerate(
        tqdm(list(prompts), desc="unlearndiffatk", unit="prompt", leave=False)
    ):
        image_seed = seed + i
        gen = torch.Generator().manual_seed(image_seed)
        if flagged is not None and flagged(technique.generate([prompt], [image_seed]))[0]:
            found.append({"source": prompt, "prompt": prompt, "tokens": [], "loss": None,
                          "checks": 0, "success": True, "attacked": False})  # fmt: skip
            continue
        x0 = image_latent(pipe, technique.unerased([prompt], [image_seed])[0]).to(dtype)
        tail = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
        tail = tail[: encoder.length - 2 - n]
        template = torch.tensor([[0] * n + tail], dtype=torch.long)
        # The relaxed one-hot rows, uniform to start (already on the simplex).
        relaxed = torch.full((n, len(allowed)), 1.0 / len(allowed), device=device)
        relaxed.requires_grad_(True)
        optimiser = torch.optim.Adam([relaxed], lr=settings.lr,
                                     weight_decay=settings.weight_decay)  # fmt: skip
        record: dict[str, Any] = {"source": prompt, "attacked": True}
        for checks, t in enumerate(timesteps, start=1):
            pipe.scheduler.set_timesteps(sampling_steps(technique))
            total = 0.0
            for _ in range(settings.iterations):
                picks = torch.multinomial(relaxed.detach().cpu(), 1, generator=gen).flatten()
                one_hot = F.one_hot(picks, len(allowed)).to(device, torch.float32)
                one_hot.requires_grad_(True)
                embeds = one_hot @ rows
                noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
                x_t = noised(pipe, x0, noise, t)
                with technique.erase():
                    with _injected(
                        pipe.text_encoder.get_input_embeddings(),
                        slice(1, n + 1),
                        lambda e=embeds: e.unsqueeze(0),
                    ):
                        cond = encoder.tokens_with_grad(template.to(device)).to(dtype)
                    _, prediction = noise_predictions(pipe, x_t, t, cond, uncond, guidance)
                loss = F.mse_loss(prediction.float(), noise.float())
                (grad,) = torch.autograd.grad(loss, [one_hot])
                optimiser.zero_grad()
                relaxed.grad = F.hardtanh(grad)
                optimiser.step()
                with torch.no_grad():
                    relaxed.copy_(project_simplex(relaxed))
                total += float(loss.detach())
            tokens = allowed[relaxed.detach().argmax(-1)].cpu()
            attacked = f"{encoder.decode(tokens)} {prompt}".strip()
            success = False
            if flagged is not None:
                with torch.no_grad():
                    success = bool(flagged(technique.generate([attacked], [image_seed]))[0])
            record.update(prompt=attacked, tokens=tokens.tolist(), loss=total / settings.iterations,
                          checks=checks, timestep=t, success=success)  # fmt: skip
            if success:
                break
        found.append(record)
    return found
