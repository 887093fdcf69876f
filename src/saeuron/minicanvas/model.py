"""Training MiniCanvas: a small Stable Diffusion pipeline for the procedural world.

The recipe is chosen to converge on 2 CPU cores: a factor-4 ``AutoencoderTiny`` (32x32
images to 8x8x4 latents, conv-only, trained with MSE in a few minutes), then a 3-level UNet
with SD's block layout (``unet.up_blocks.1.attentions.{0,1,2}`` at mid resolution) trained
jointly with a small CLIP text model, epsilon prediction, min-SNR loss weighting and an EMA of the
weights. Classifier-free guidance comes from dropping 10 % of captions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel

# The settings live in a torch-free module, which --help reads; they stay importable from here.
from saeuron.minicanvas.model_config import ModelTrainConfig
from saeuron.minicanvas.world import (
    sample_images,
    sample_scenes,
    scene_caption,
    training_caption,
)
from saeuron.models.resolve import ResolvedModel
from saeuron.models.tiny import clip_text_config, sd_ddim_scheduler
from saeuron.models.tokenizer import clip_tokenizer
from saeuron.utils.config import ConfigError
from saeuron.utils.devices import resolve_device
from saeuron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


def build_vae():
    return AutoencoderTiny(
        encoder_block_out_channels=(32, 32, 32),
        decoder_block_out_channels=(32, 32, 32),
        num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        latent_channels=4,
    )


def build_unet():
    """Stable Diffusion's UNet layout at a small scale.

    As in SD, the lowest resolution has no attention (``DownBlock2D`` / ``UpBlock2D``), so
    ``up_blocks.1`` is the mid-resolution block with cross-attention (4x4 tokens here, 16x16
    in SD at 512 px) and ``up_blocks.2`` the full-resolution one. A two-level UNet would put
    ``up_blocks.1`` at full resolution, where the residual stream holds pixel detail rather
    than concepts and SAE latents barely tell one style or object from another (measured:
    the best-scoring latent of "striped" fired 0.83 on striped prompts vs 0.63 on others
    there, against 0.63 vs 0.004 one level deeper).
    """
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 128),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_text_encoder():
    return CLIPTextModel(clip_text_config(hidden=64, intermediate=128, act="quick_gelu"))


build_scheduler = sd_ddim_scheduler


def _to_model_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(x: torch.Tensor, cfg: ModelTrainConfig, device: torch.device):
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=cfg.vae_steps)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    bar = tqdm(range(cfg.vae_steps), desc="autoencoder", unit="step", mininterval=5)
    for _ in bar:
        batch = x[torch.randint(0, len(x), (cfg.vae_batch,), generator=g)].to(device)
        z = vae.encode(batch).latents
        # Noise on the latents keeps the decoder tolerant of what diffusion samples.
        noisy = z + 0.1 * z.detach().std() * torch.randn(z.shape, generator=g).to(device)
        recon = vae.decode(noisy).sample
        loss = F.mse_loss(recon, batch) + 1e-4 * z.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        # Near the one-cycle peak a single bad step sent the MSE from 0.09 to 2.3.
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
    return vae.eval()


def _pipeline_folder(model: ResolvedModel, field_name: str) -> Path:
    """The folder of a saved pipeline named by a bundle name or a path."""
    folder = Path(model.source)
    missing = [part for part in ("vae", "unet", "text_encoder") if not (folder / part).is_dir()]
    if missing:
        raise ConfigError(field_name, f"{model!r} is not a saved pipeline: no {missing[0]}/")
    return folder


def load_vae(model: ResolvedModel, device: torch.device) -> Any:
    """The autoencoder of a saved pipeline (a folder or a bundle name), in float32."""
    folder = _pipeline_folder(model, "vae_from")
    logger.info("reusing the autoencoder of %s", folder)
    return AutoencoderTiny.from_pretrained(folder / "vae").to(device, torch.float32).eval()


@torch.no_grad()
def encode_all(vae, x: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    return torch.cat(
        [vae.encode(x[i : i + batch].to(device)).latents.cpu() for i in range(0, len(x), batch)]
    )


def _caption(objects: np.ndarray, style: int, rng: np.random.Generator) -> str:
    """``objects``: ``[first, second]``, the second -1 for an image of one object."""
    if objects[1] < 0:
        return training_caption(int(objects[0]), int(style), rng)
    return scene_caption((int(objects[0]), int(objects[1])), int(style), rng)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def train_denoiser(
    latents: torch.Tensor,
    objects: np.ndarray,
    styles: np.ndarray,
    cfg: ModelTrainConfig,
    device: torch.device,
    on_checkpoint: Any = None,
) -> tuple[Any, Any]:
    tokenizer = clip_tokenizer()
    if cfg.init_source is not None:
        folder = _pipeline_folder(cfg.init_source, "init_from")
        logger.info("fine-tuning the UNet and text encoder of %s", folder)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(
            folder / "text_encoder", torch_dtype=torch.float32
        )
        unet, text_encoder = unet.to(device).train(), text_encoder.to(device).train()
    else:
        unet, text_encoder = build_unet().to(device), build_text_encoder().to(device)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    warmup = min(200, cfg.unet_steps // 10)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.unet_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    noise_sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR-5 weighting: stops the easy low-noise steps from dominating the loss.
    weights = (snr.clamp(max=5.0) / snr).to(device)

    rng = np.random.default_rng(cfg.seed + 2)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    bar = tqdm(range(cfg.unet_steps), desc="denoiser", unit="step", mininterval=5)
    for step in bar:
        idx = rng.integers(0, len(latents), cfg.unet_batch)
        captions = [
            ""
            if rng.random() < cfg.caption_dropout
            else _caption(objects[i], styles[i], rng)
            for i in idx
        ]
        ids = tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        x0 = latents[torch.from_numpy(idx)].to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (len(idx),), generator=g).to(device)
        noisy = noise_sched.add_noise(x0, noise, t)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        loss = (weights[t] * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step % 500 == 0:
            logger.info("denoiser step %d/%d loss %.4f", step, cfg.unet_steps, loss.item())
        if on_checkpoint is not None and cfg.save_every and step and step % cfg.save_every == 0:
            on_checkpoint(ema_unet, ema_text)
    return ema_unet, ema_text


def _drop_stale_vae_key(folder: Path) -> None:
    """AutoencoderTiny registers ``block_out_channels`` (its decoder's) in its config, so
    save_pretrained writes it, and loading then warns that the key is unexpected. Loading
    registers it again, so the file does without it."""
    path = folder / "vae" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("block_out_channels", None) is not None:
        atomic_write_json(path, config)


def train_minicanvas(cfg: ModelTrainConfig) -> Path:
    """Train the whole pipeline and save it (fp16 weights) to ``cfg.out``."""
    # Checked before any data is drawn or any step is taken.
    for name, source in (("vae_from", cfg.vae_source), ("init_from", cfg.init_source)):
        if source is not None:
            _pipeline_folder(source, name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    images, objects, styles = sample_images(cfg.n_images, seed=cfg.seed)
    objects = np.stack([objects, np.full_like(objects, -1)], axis=1)
    if cfg.n_scenes:
        scenes, scene_objects, scene_styles = sample_scenes(cfg.n_scenes, seed=cfg.seed + 10)
        images = np.concatenate([images, scenes])
        objects = np.concatenate([objects, scene_objects])
        styles = np.concatenate([styles, scene_styles])
    x = _to_model_range(images)
    if cfg.vae_source is not None:
        vae = load_vae(cfg.vae_source, device)
    else:
        logger.info("training the autoencoder on %d images (%s)", len(x), device)
        vae = train_vae(x, cfg, device)
    latents = encode_all(vae, x, device)
    # SD's convention: latents are scaled to unit variance before diffusion.
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info("latent scaling factor %.4f; training the denoiser", scaling)
    out = cfg.output_folder()

    def save(unet: Any, text_encoder: Any) -> None:
        pipe = StableDiffusionPipeline(
            vae=copy.deepcopy(vae),
            text_encoder=copy.deepcopy(text_encoder),
            tokenizer=clip_tokenizer(),
            unet=copy.deepcopy(unet),
            scheduler=build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        # fp16 on disk keeps the bundle small; loaders upcast to float32 on the CPU.
        pipe.to(torch.device("cpu"), torch.float16).save_pretrained(out, safe_serialization=True)
        _drop_stale_vae_key(out)

    unet, text_encoder = train_denoiser(
        latents * scaling, objects, styles, cfg, device, on_checkpoint=save
    )
    save(unet, text_encoder)
    minutes = (time.perf_counter() - start) / 60
    logger.info("saved MiniCanvas to %s after %.1f min", out, minutes)
    return out
