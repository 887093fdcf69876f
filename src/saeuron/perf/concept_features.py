"""On-the-fly concept features: the project's path against the published procedure.

The reference procedure finds a new concept's latents by sampling 20 images of it to the end
(50 steps, decoded to pixels) while a hook keeps the activations of step 10, then ranks the
latents by their mean there. The project's ``shortcut`` reads the same step of the same 20
samples, but stops each sampling run right after that step and never decodes: the steps
after 10 and the VAE cannot change what step 10 saw. Both are timed here on the same
pipeline, SAE and prompts, and their selected latents compared (they must agree).

The published procedure is written here as a reference, not used by the library.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import torch

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.pipelines import load_pipeline
from saeuron.models.resolve import ModelArg, ResolvedModel, resolve_model
from saeuron.models.sampling import seed_generators
from saeuron.models.tokens import conditional_rows, output_tensor, to_tokens
from saeuron.perf import BENCHMARKS, Row, reproduce
from saeuron.sae import Sae, SaeConfig

logger = logging.getLogger(__name__)

STEPS, READ_STEP, IMAGES, TAU = 50, 10, 20, 10


def full_sampling_procedure(
    pipe: Any, sae: Any, hookpoint: str, concept: str, batch_size: int,
    images: int = IMAGES, steps: int = STEPS, read_step: int = READ_STEP,
) -> list[int]:
    """The reference procedure: full sampling runs with decoding, step 10's tokens kept, the
    top latents by their mean."""
    total = torch.zeros(sae.num_latents)
    count = 0
    module = resolve_module(pipe, hookpoint)
    with track_denoising(pipe) as state:

        def keep(mod: Any, args: Any, kwargs: Any, output: Any) -> None:
            nonlocal total, count
            if state.step != read_step or state.substep:
                return
            out = output_tensor(module, output)
            x = to_tokens(out[conditional_rows(out.shape[0], state.guidance, "cond")])
            with torch.no_grad():
                codes = sae.encode_dense(x.reshape(-1, x.shape[-1]))
            total += codes.float().sum(0).cpu()
            count += codes.shape[0]

        handle = module.register_forward_hook(keep, with_kwargs=True)
        try:
            for start in range(0, images, batch_size):
                n = min(batch_size, images - start)
                pipe(
                    [concept] * n,
                    num_inference_steps=steps,
                    guidance_scale=7.5,
                    generator=seed_generators(range(start, start + n)),
                )
        finally:
            handle.remove()
    return torch.argsort(-(total / max(count, 1)), stable=True)[:TAU].tolist()


def _one(
    named: ModelArg, concept: str, images: int, steps: int, read_step: int
) -> tuple[float, float, bool]:
    model = resolve_model(named)  # where the benchmark's model name enters
    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    bundle = model.bundle
    if bundle is not None:
        hookpoint = bundle.hookpoint_for(concept)
        sae = Sae.from_pretrained(bundle.sae_folder, hookpoint=hookpoint)
    else:
        hookpoint = "unet.up_blocks.1.attentions.0"
        width = resolve_module(pipe, hookpoint).config.in_channels
        torch.manual_seed(0)
        sae = Sae(SaeConfig(d_in=width, expansion_factor=16, k=8))
    sae.meta["hookpoint"] = hookpoint
    batch = 4
    with tempfile.TemporaryDirectory() as cache:
        # Built from its fields (not a dict) so that the resolved model is kept; the SAE is
        # given in Python below, "benchmark" only names it.
        cfg = ConceptBuildConfig(**{
            "concept": concept, "model": model, "sae": ResolvedModel("benchmark"),
            "hookpoint": hookpoint,
            "method": "shortcut", "tau": TAU, "shortcut_step": read_step,
            "num_inference_steps": steps, "batch_size": batch, "cache_dir": cache,
            "device": "cpu", "shortcut_images": images,
        })  # fmt: skip
        start = time.perf_counter()
        ours = build_concept(cfg, pipe=pipe, sae=sae)
        ours_s = time.perf_counter() - start
    start = time.perf_counter()
    full = full_sampling_procedure(pipe, sae, hookpoint, concept, batch, images, steps, read_step)
    full_s = time.perf_counter() - start
    # Ties in the mean can order differently; the sets must match.
    same = set(ours.indices[0].tolist()) == set(full)
    logger.info(
        "%s: ours %.2f s, full sampling %.2f s, same latents: %s", model, ours_s, full_s, same
    )
    return ours_s, full_s, same


@BENCHMARKS.register("features")
def run(quick: bool, device: str) -> list[Row]:
    rows = []
    images, steps, read_step = (4, 20, 4) if quick else (IMAGES, STEPS, READ_STEP)
    for model, concept in (("minicanvas", "moon"), ("tiny-sd", "a cat")):
        ours, full, same = _one(model, concept, images, steps, read_step)
        rows.append(
            Row(
                benchmark="features",
                what=f"new concept's features on {model}, shortcut / full-sampling procedure",
                ours=ours,
                baseline=full,
                unit="s",
                target="<= 0.25x",
                met=ours / full <= 0.25,
                command=reproduce("features", quick, device),
                notes=f"{images} images, {steps} steps, step {read_step} read, top {TAU}; "
                f"same latents selected: {same}; CPU",
                extra={"same_latents": same},
            )
        )
    return rows
