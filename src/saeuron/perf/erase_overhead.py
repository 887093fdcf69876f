"""Erasing overhead per denoising step on an SD-1.4-sized UNet.

A UNet with Stable Diffusion 1.4's configuration and random weights, 64x64 latents, a CFG
batch of 2, the 1280-wide ``up_blocks.1.attentions.1`` hookpoint and an SAE with 20,480
latents and k = 32. Whole steps are timed interleaved (round-robin, so drifts of a shared
machine hit every variant alike), but a 2 % difference is within a CPU step's noise: the
ratio reported is (median step without the edit + the hook's own cost) / the same step,
where the hook's cost is the hooked block timed alone many times with and without the edit.
The whole-step ratios are kept in the notes.

- ``none``: the UNet alone.
- ``ours, nothing to edit``: the library's default edit (conditional half, exact error) on
  a step where no token reaches the concept latents' thresholds, what a prompt without the
  concept costs; only the selected latents' encoder rows are evaluated.
- ``ours, every token a candidate``: thresholds below every activation, so every token of
  the conditional half also pays the full 20,480-latent encode: the worst case.
- ``published``: the reference way of the published code, written here for comparison:
  dense encode and decode of both CFG halves, the output replaced by the edited
  reconstruction plus the error (``guidance_half='both', error_term='paper'``).
- ``recipe``: an erasure recipe of 3 concepts on 2 block SAEs (``up_blocks.1.attentions.1``
  and ``.0``), one ``ablate``, one ``anchor`` (into a fourth concept, not erased) and one
  ``ablate`` at both blocks, attached as ``SAeUron`` attaches one; the hook's cost is the two
  hooked blocks'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from saeuron.erasure.erase import erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.recipe import Recipe
from saeuron.erasure.recipe_erasure import RecipeErasure
from saeuron.models.hookpoints import resolve_module
from saeuron.perf import BENCHMARKS, Row, reproduce
from saeuron.sae import Sae, SaeConfig

logger = logging.getLogger(__name__)

HOOKPOINT = "unet.up_blocks.1.attentions.1"
SECOND_HOOKPOINT = "unet.up_blocks.1.attentions.0"


def sd14_unet_config(quick: bool) -> dict[str, Any]:
    """SD 1.4's UNet; quick: the same layout at a width a test can afford."""
    if quick:
        return dict(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64, 128, 128), cross_attention_dim=32,
            attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )  # fmt: skip
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip


def build_unet(quick: bool, device: str) -> Any:
    torch.manual_seed(0)
    # Built on the meta device and filled with small normal weights: the default init of
    # 860M parameters takes longer than the benchmark itself on 2 cores.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd14_unet_config(quick))
    unet = unet.to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return unet.eval()


def _time(fn: Callable[[], Any], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@BENCHMARKS.register("erase")
def run(quick: bool, device: str) -> list[Row]:
    bench = _stand_in(quick, device)
    sae, pipe, step = bench.sae, bench.pipe, bench.step
    quiet = ConceptFeatures.from_latents("concept", bench.latents_of, mean=1.0, threshold=1e6)
    busy = ConceptFeatures.from_latents("concept", bench.latents_of, mean=1.0, threshold=-1.0)
    settings = {
        "ours, nothing to edit": (quiet, "cond", "exact"),
        "ours, every token a candidate": (busy, "cond", "exact"),
        "published (dense, both halves)": (quiet, "both", "paper"),
    }

    def erasing(name: str) -> Any:
        features, half, error = settings[name]
        return erase(pipe, sae, features, multiplier=-20.0, guidance_half=half,
                     error_term=error, hookpoint=HOOKPOINT, warn_unedited=False)  # fmt: skip

    def edited(name: str) -> Callable[[], Any]:
        def call() -> Any:
            with erasing(name):
                return step()

        return call

    variants = {"none": step, **{name: edited(name) for name in settings}}
    reps = 3 if quick else 5
    median = _interleaved_medians(variants, reps, device)
    # The hook's own cost: the block timed alone, many times, with and without the edit
    # (the step index comes from one UNet call inside the context, as in sampling).
    block_reps = 10 if quick else 30
    block_time: dict[str, float] = {}
    for name in variants:
        with erasing(name) if name in settings else contextlib.nullcontext():
            step()
            bench.block()
            block_time[name] = statistics.median(
                _time(bench.block, device) for _ in range(block_reps)
            )
    logger.info("erase overhead medians (s): steps %s, block %s", median, block_time)
    rows = [
        _step_row(name, median, block_time, reps, block_reps, bench.shape, quick, device)
        for name in settings
    ]
    with tempfile.TemporaryDirectory(prefix="saeuron-perf-recipe-") as tmp:
        rows += recipe_rows(pipe, sae, step, bench.latents_of, Path(tmp), quick, device,
                            median["none"], bench.shape)  # fmt: skip
    return rows


class _StandIn(NamedTuple):
    """The UNet, its SAE, a stand-in pipeline, one step and the hooked block alone."""

    sae: Sae
    pipe: Any
    step: Callable[[], Any]
    block: Callable[[], Any]
    latents_of: list[int]
    shape: str


def _stand_in(quick: bool, device: str) -> _StandIn:
    unet = build_unet(quick, device)
    cfg = unet.config
    width = cfg.block_out_channels[-2]
    num_latents, k = (2048, 16) if quick else (20480, 32)
    sae = Sae(SaeConfig(d_in=width, num_latents=num_latents, k=k), device=device).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    # The hook reads the step from the pipeline's scheduler and CFG flag: a stand-in
    # pipeline with the real UNet and scheduler is all it needs.
    pipe = types.SimpleNamespace(unet=unet, scheduler=scheduler, do_classifier_free_guidance=True)
    size = cfg.sample_size
    gen = torch.Generator("cpu").manual_seed(1)
    latents = torch.randn(2, 4, size, size, generator=gen).to(device)
    text = torch.randn(2, 77, cfg.cross_attention_dim, generator=gen).to(device)
    t = scheduler.timesteps[10]

    def step() -> Any:
        with torch.no_grad():
            return unet(latents, t, encoder_hidden_states=text).sample

    # The hooked block's own inputs, to time the edit without the noise of 860M parameters.
    module = resolve_module(pipe, HOOKPOINT)
    captured: dict[str, Any] = {}
    grab = module.register_forward_hook(
        lambda m, a, kw, o: captured.update(args=a, kwargs=kw), with_kwargs=True
    )
    step()
    grab.remove()

    def block() -> Any:
        with torch.no_grad():
            return module(*captured["args"], **captured["kwargs"])

    shape = (
        f"UNet {'quick' if quick else 'SD-1.4'} config, {size}x{size} latents, batch 2 (CFG), "
        f"hookpoint {HOOKPOINT} ({width} wide), SAE {num_latents} latents k {k}, "
        f"10 concept latents, {device}"
    )
    latents_of = list(range(0, num_latents, num_latents // 10))[:10]
    return _StandIn(sae, pipe, step, block, latents_of, shape)


def _interleaved_medians(
    variants: dict[str, Callable[[], Any]], reps: int, device: str
) -> dict[str, float]:
    """Each variant's median time, after a warm-up (allocator, kernels, lazy inits), the
    calls interleaved so that a shared machine's drifts hit every variant alike."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(_time(fn, device))
    return {name: statistics.median(v) for name, v in times.items()}


def _step_row(
    name: str, median: dict[str, float], block_time: dict[str, float], reps: int,
    block_reps: int, shape: str, quick: bool, device: str,
) -> Row:  # fmt: skip
    ours = name.startswith("ours")
    base = median["none"]
    hook = block_time[name] - block_time["none"]
    ratio = (base + hook) / base
    return Row(
        benchmark="erase",
        what=f"step time, {name} / none",
        ours=base + hook,
        baseline=base,
        unit="s/step",
        target="<= 1.02x" if ours else "",
        met=(ratio <= 1.02) if ours else None,
        command=reproduce("erase", quick, device),
        notes=f"{shape}; step = median UNet step ({reps} interleaved) + the hook's "
        f"cost (median of {block_reps} timings of the hooked block with and without "
        f"the edit: {hook * 1e3:.1f} ms); whole steps timed with the edit: "
        f"{median[name]:.3f} s against {base:.3f} s ({median[name] / base:.3f}x)",
        extra={"step_with_edit": median[name], "hook_seconds": hook,
               "block_seconds": block_time[name]},  # fmt: skip
    )


def write_recipe(root: Path, sae: Sae, latents: list[int], threshold: float) -> Recipe:
    """3 concepts on 2 block SAEs (the same weights, saved once per block), in ``root``."""
    for hookpoint in (HOOKPOINT, SECOND_HOOKPOINT):
        sae.save_pretrained(root / "saes", hookpoint)
    refs = {}
    # "d" is only b's anchor: not erased, so b's edit runs the anchor rule.
    for i, name in enumerate(("a", "b", "c", "d")):
        chosen = [(x + i) % sae.num_latents for x in latents]
        ConceptFeatures.from_latents(name, chosen, mean=1.0, threshold=threshold).save(
            root / "features" / name
        )
        refs[name] = {"path": f"features/{name}"}

    def edit(hookpoint: str, name: str, rule: str, anchors: tuple[str, ...] = ()) -> dict:
        return {"hookpoint": hookpoint, "sae": {"path": "saes"}, "features": refs[name],
                "rule": rule, "strength": 0.0 if rule == "anchor" else -5.0,
                "anchors": [{"concept": a, "features": refs[a]} for a in anchors]}  # fmt: skip

    data = {
        "base_model": {"id": "sd-1.4-sized"},
        "sampling": {"num_inference_steps": 50, "guidance_scale": 7.5},
        "concepts": {
            "a": {"edits": [edit(HOOKPOINT, "a", "ablate")]},
            "b": {"edits": [edit(SECOND_HOOKPOINT, "b", "anchor", ("d", "c"))]},
            "c": {"edits": [edit(HOOKPOINT, "c", "ablate"), edit(SECOND_HOOKPOINT, "c", "ablate")]},
        },
    }
    (root / "recipe.json").write_text(json.dumps(data))
    return Recipe.load(root / "recipe.json")


def recipe_rows(
    pipe: Any, sae: Sae, step: Callable[[], Any], latents: list[int], root: Path, quick: bool,
    device: str, base: float, shape: str,
) -> list[Row]:  # fmt: skip
    """The recipe's step overhead: the median step plus its two hooked blocks' own cost."""
    modules = [resolve_module(pipe, h) for h in (HOOKPOINT, SECOND_HOOKPOINT)]
    captured: list[dict[str, Any]] = [{}, {}]
    grabs = [
        m.register_forward_hook(lambda m, a, kw, o, c=c: c.update(args=a, kwargs=kw),
                                with_kwargs=True)
        for m, c in zip(modules, captured)
    ]  # fmt: skip
    step()
    for grab in grabs:
        grab.remove()

    def blocks() -> Any:
        with torch.no_grad():
            for module, inputs in zip(modules, captured):
                module(*inputs["args"], **inputs["kwargs"])

    reps = 10 if quick else 30
    rows = []
    for label, threshold in (("nothing to edit", 1e6), ("every token a candidate", -1.0)):
        folder = root / label.replace(" ", "-")
        recipe = write_recipe(folder, sae, latents, threshold)
        plain = statistics.median(_time(blocks, device) for _ in range(reps))
        with RecipeErasure(pipe, recipe):
            step()
            whole = _time(step, device)
            hooked = statistics.median(_time(blocks, device) for _ in range(reps))
        hook = hooked - plain
        ratio = (base + hook) / base
        rows.append(Row(
            benchmark="erase", what=f"step time, recipe (3 concepts, 2 SAEs, ablate + anchor), "
            f"{label} / none", ours=base + hook, baseline=base, unit="s/step",
            target="<= 1.03x", met=ratio <= 1.03, command=reproduce("erase", quick, device),
            notes=f"{shape}; second SAE at {SECOND_HOOKPOINT}; hook cost {hook * 1e3:.1f} ms "
            f"(median of {reps} timings of the two hooked blocks with and without the recipe); "
            f"one whole step with the recipe: {whole:.3f} s against {base:.3f} s",
            extra={"hook_seconds": hook, "step_with_recipe": whole},
        ))  # fmt: skip
    return rows
