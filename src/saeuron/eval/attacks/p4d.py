"""P4D (Chin et al., ICML 2024): prompts optimised so the erased model draws the concept.

For a prompt that shows the concept, ``length`` free tokens ``P`` are optimised so that the
erased model's noise prediction for ``P`` matches the unerased model's conditional
prediction for the prompt, on noised latents of the unerased model's own image of it, at
timesteps drawn from the whole training range:

    min_P  E_{t ~ U[0, T), eps} || eps_erased(x_t, t, P) - eps_unerased(x_t, t, prompt) ||^2

as the paper's code does. The erased prediction is the conditional one (the erasure acts
inside the UNet), or the guided one with the technique's negative prompt when the technique
erases through guidance (the paper's treatment of negative-prompt and SLD models). It goes
through the technique under test, erasure included (white box), so what is found is an
attack on it. The target image is the most flagged of ``target_samples`` unerased images.

The tokens are soft embeddings projected to the nearest vocabulary entry at every step and
trained straight through (PEZ, as P4D does), with AdamW. Every ``eval_every`` iterations the
current prompt is drawn by the erased model and compared with the target image; the prompt
whose image is most similar (CLIP image embeddings, as P4D; pixel cosine similarity when no
CLIP can be loaded, said in the log and the record) is the one returned. This is P4D-N (all
tokens free); P4D-K's interleaving is not implemented.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.eval.attacks.ring_a_bell import TextEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class P4dSettings:
    length: int = 16
    iterations: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    eval_every: int = 50
    """Iterations between two draws of the current prompt (the best one is kept)."""
    target_samples: int = 3
    """Unerased images of the prompt; the most flagged one is the target."""


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


@contextlib.contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """No parameter gradients while inside (the attacks need gradients for their tokens
    only); each parameter's ``requires_grad`` is restored after."""
    params = [p for m in modules for p in m.parameters()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def noise_predictions(
    pipe: Any, latents: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float
) -> tuple[Tensor, Tensor]:
    """(guided, conditional) noise predictions, computed as the pipeline computes them: one
    [uncond; cond] batch, so an erasure that edits the conditional half sees what it expects.

    ``latents`` are variance-preserving noised latents (:func:`noised`): what every Stable
    Diffusion scheduler hands the UNet after its own input scaling, so none is applied."""
    pipe._guidance_scale = guidance  # what do_classifier_free_guidance reads (erase hooks too)
    t = torch.as_tensor(t, device=latents.device)
    eps = pipe.unet(
        torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])
    ).sample
    u, c = eps.chunk(2)
    return u + guidance * (c - u), c


def guided_noise(
    pipe: Any, latents: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float
) -> Tensor:
    return noise_predictions(pipe, latents, t, cond, uncond, guidance)[0]


def unerased_conditional(pipe: Any, latents: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """P4D's target: the unerased UNet's conditional prediction (no guidance, no erasure)."""
    with torch.no_grad():
        t = torch.as_tensor(t, device=latents.device)
        return pipe.unet(latents, t, encoder_hidden_states=cond).sample


def noised(pipe: Any, x0: Tensor, noise: Tensor, t: int) -> Tensor:
    """``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` with the training schedule's ``a_t`` (any
    training timestep, not only those of the sampling schedule)."""
    a = pipe.scheduler.alphas_cumprod[int(t)].to(x0.device, torch.float32)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def train_timesteps(pipe: Any) -> int:
    return int(pipe.scheduler.config.num_train_timesteps)


def image_latent(pipe: Any, image: Any) -> Tensor:
    """The VAE latent of a PIL image, scaled as the pipeline's latents are (the attack
    papers encode their target images the same way)."""
    vae = pipe.vae
    param = next(vae.parameters())
    pixels = pipe.image_processor.preprocess(image).to(param.device, param.dtype)
    with torch.no_grad():
        out = vae.encode(pixels)
    latent = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
    return latent * float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


def sampling_steps(technique: Any) -> int:
    return int(getattr(technique.config, "num_inference_steps", 50))


def guidance_of(technique: Any) -> float:
    return float(getattr(technique.config, "guidance_scale", 7.5))


class ImageSimilarity(Protocol):
    name: str

    def __call__(self, reference: Any, images: Sequence[Any]) -> list[float]: ...


class PixelSimilarity:
    """Cosine similarity of the centred RGB pixels: the stand-in when no CLIP is at hand."""

    name = "pixel cosine similarity"

    def __call__(self, reference: Any, images: Sequence[Any]) -> list[float]:
        def vector(image: Any) -> np.ndarray:
            rgb = image.convert("RGB").resize(reference.size)
            return np.asarray(rgb, dtype=np.float64).ravel() / 127.5 - 1.0

        ref = vector(reference)
        out = []
        for image in images:
            v = vector(image)
            norm = float(np.linalg.norm(ref) * np.linalg.norm(v))
            out.append(float(ref @ v / norm) if norm > 0 else 0.0)
        return out


class ClipSimilarity:
    """Cosine similarity of CLIP image embeddings (P4D's selection criterion)."""

    def __init__(self, clip: Any, model: str):
        self.clip = clip
        self.name = f"CLIP image similarity ({model})"

    def __call__(self, reference: Any, images: Sequence[Any]) -> list[float]:
        feats = self.clip.embed_images([reference, *images])
        feats = F.normalize(feats.float(), dim=-1)
        return (feats[1:] @ feats[0]).tolist()


def p4d(
    technique: Any,
    prompts: Sequence[str],
    settings: P4dSettings,
    seed: int,
    forbidden_words: Sequence[str] = (),
    rank: Callable[[list[Any]], list[float]] | None = None,
    similarity: ImageSimilarity | None = None,
) -> list[dict[str, Any]]:
    """P4D-N against ``technique`` (``pipe``, ``erase()``, ``generate`` and ``unerased``,
    and ``negative`` when it guides away from a negative prompt), one search per prompt.

    Prompt ``i`` is drawn with seed ``seed + i``, the seed its adversarial prompt is later
    sampled with. ``rank`` scores images by how much they show the concept (the detector);
    without it the first target image is used. ``similarity`` picks the best prompt
    (default: :class:`PixelSimilarity`)."""
    with frozen(technique.pipe.unet, technique.pipe.text_encoder):
        return _p4d(technique, prompts, settings, seed, forbidden_words, rank, similarity)


def _p4d(
    technique: Any,
    prompts: Sequence[str],
    settings: P4dSettings,
    seed: int,
    forbidden_words: Sequence[str],
    rank: Callable[[list[Any]], list[float]] | None,
    similarity: ImageSimilarity | None,
) -> list[dict[str, Any]]:
    similarity = similarity or PixelSimilarity()
    pipe = technique.pipe
    encoder = TextEncoder(pipe, forbidden_words)
    device = encoder.device
    dtype = next(pipe.unet.parameters()).dtype
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = encoder.vocabulary.to(device)
    unit = F.normalize(table[allowed].float(), dim=-1)
    negative = getattr(technique, "negative", None)
    guidance = guidance_of(technique)
    # The erased model includes its text encoder: an erasure there edits the encodings.
    with torch.no_grad(), technique.erase():
        uncond = encoder.prompts([negative or ""]).to(device, dtype)
    n = settings.length
    template = torch.zeros((1, n), dtype=torch.long)
    found = []
    for i, prompt in enumerate(tqdm(list(prompts), desc="p4d", unit="prompt", leave=False)):
        image_seed = seed + i
        gen = torch.Generator().manual_seed(image_seed)
        seeds = [image_seed + 1_000_003 * k for k in range(settings.target_samples)]
        candidates = technique.unerased([prompt] * len(seeds), seeds)
        scores = rank(candidates) if rank is not None and len(candidates) > 1 else [0.0]
        target_image = candidates[int(np.argmax(scores))]
        x0 = image_latent(pipe, target_image).to(device, dtype)
        with torch.no_grad():
            target_cond = encoder.prompts([prompt]).to(device, dtype)
        # The erase hooks map a timestep to a step of the sampling schedule.
        pipe.scheduler.set_timesteps(sampling_steps(technique))
        start = allowed[torch.randint(len(allowed), (n,), generator=gen).to(device)]
        soft = table[start].clone().float().requires_grad_(True)
        optimiser = torch.optim.AdamW([soft], lr=settings.lr, weight_decay=settings.weight_decay)
        best = {"similarity": -float("inf"), "tokens": start.cpu(), "loss": float("nan"),
                "iteration": -1}  # fmt: skip
        for step in range(settings.iterations):
            # The nearest allowed token (cosine) of each soft embedding.
            hard = allowed[(F.normalize(soft.detach(), dim=-1) @ unit.T).argmax(-1)]
            # Straight through: the forward pass sees the hard tokens, the gradient the soft.
            straight = soft + (table[hard].float() - soft).detach()
            t = int(torch.randint(train_timesteps(pipe), (1,), generator=gen))
            noise = torch.randn(x0.shape, generator=gen).to(device, x0.dtype)
            x_t = noised(pipe, x0, noise, t)
            target = unerased_conditional(pipe, x_t, t, target_cond)
            with technique.erase():
                with _injected(
                    pipe.text_encoder.get_input_embeddings(),
                    slice(1, n + 1),
                    lambda s=straight: s.unsqueeze(0),
                ):
                    cond = encoder.tokens_with_grad(template.to(device)).to(dtype)
                guided, conditional = noise_predictions(pipe, x_t, t, cond, uncond, guidance)
            prediction = guided if negative else conditional
            loss = F.mse_loss(prediction.float(), target.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % settings.eval_every == 0:
                text = encoder.decode(hard)
                with torch.no_grad():
                    drawn = technique.generate([text], [image_seed])
                value = similarity(target_image, drawn)[0]
                if value > best["similarity"]:
                    best = {"similarity": value, "tokens": hard.detach().cpu(),
                            "loss": float(loss.detach()), "iteration": step}  # fmt: skip
        found.append(
            {"source": prompt, "prompt": encoder.decode(best["tokens"]),
             "tokens": best["tokens"].tolist(), "similarity": best["similarity"],
             "loss": best["loss"], "iteration": best["iteration"]}
        )  # fmt: skip
    return found
