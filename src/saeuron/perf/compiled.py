"""The erasing hook under ``torch.compile``: graph breaks and overhead.

On the tiny Stable Diffusion pipeline (SD 1.x block names, 32-wide
``up_blocks.1.attentions.1``, a CFG batch of 2; ``--quick``: an 8-wide micro UNet with the
same block names) with an SAE of 128 latents and a quarter of them selected with threshold
-1, so every token is a candidate and the edit always runs:

- graph breaks of the hooked UNet under ``torch._dynamo.explain`` (the dense edit path,
  which the hook takes under compilation): target 0, since every break splits the graph and
  on CUDA costs a host sync;
- one UNet call compiled with the hook against the same UNet compiled without it (two
  copies with the same weights, each compiled once, timed interleaved): target <= 1.02x;
- the same ratio in eager mode, for reference.

The backend is ``inductor`` on CUDA and in the full CPU run (it needs a C++ compiler), and
``aot_eager`` under ``--quick``, where inductor's compile time would dominate a smoke test.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from saeuron.erasure.erase import attach, erase
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.models.tiny import build_tiny_sd
from saeuron.perf import BENCHMARKS, Row, reproduce
from saeuron.sae import Sae, SaeConfig

logger = logging.getLogger(__name__)

HOOKPOINT = "unet.up_blocks.1.attentions.1"


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    def timed(fn: Callable[[], Any]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def micro_unet() -> UNet2DConditionModel:
    """SD 1.x's block names on the smallest UNet that has them: compiles in seconds."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip


def setup(
    device: str, quick: bool = False
) -> tuple[Any, Sae, ConceptFeatures, tuple[torch.Tensor, ...]]:
    """The tiny pipeline (quick: with the micro UNet), its SAE, features that always fire,
    and one step's UNet inputs."""
    pipe = build_tiny_sd()
    if quick:
        pipe.unet = micro_unet()
    pipe = pipe.to(device)
    # up_blocks.1 is the second block up: as wide as the second-deepest down block.
    width = pipe.unet.config.block_out_channels[-2]
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=width, num_latents=128, k=8), device=device).eval()
    sae.meta["hookpoint"] = HOOKPOINT
    features = ConceptFeatures.from_latents("c", list(range(0, 128, 4)), mean=1.0, threshold=-1.0,
                                            meta={SAE_FINGERPRINT: sae.fingerprint()})
    pipe.scheduler.set_timesteps(4)
    # Called outside the pipeline's loop, the tracker takes the CFG batch from here.
    pipe._guidance_scale = 7.5
    gen = torch.Generator("cpu").manual_seed(1)
    size = pipe.unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=gen).to(device)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=gen).to(device)
    t = pipe.scheduler.timesteps[1]
    return pipe, sae, features, (x, t, context)


def graph_breaks(pipe: Any, sae: Sae, features: ConceptFeatures, inputs: tuple) -> int:
    """Graph breaks of ``pipe.unet`` with the erasure attached (the default edit path)."""
    x, t, context = inputs
    torch._dynamo.reset()
    with erase(pipe, sae, features, multiplier=-20.0, warn_unedited=False):
        explained = torch._dynamo.explain(pipe.unet)(x, t, encoder_hidden_states=context)
    return int(explained.graph_break_count)


@BENCHMARKS.register("compile")
def run(quick: bool, device: str) -> list[Row]:
    backend = "aot_eager" if quick and not device.startswith("cuda") else "inductor"
    pipe, sae, features, inputs = setup(device, quick)
    x, t, context = inputs
    breaks = graph_breaks(pipe, sae, features, inputs)

    # Two UNets with the same weights: the hook lives on one of them only, so each compiled
    # graph is traced once and neither is recompiled when the other gains or loses a hook.
    plain_unet = copy.deepcopy(pipe.unet)
    erasure = attach(pipe, sae, features, multiplier=-20.0)
    torch._dynamo.reset()
    try:
        hooked = torch.compile(pipe.unet, backend=backend)
        plain = torch.compile(plain_unet, backend=backend)

        def call(unet: Any) -> Callable[[], Any]:
            def go() -> Any:
                with torch.no_grad():
                    return unet(x, t, encoder_hidden_states=context).sample

            return go

        variants = {
            "compiled, hook": call(hooked),
            "compiled, none": call(plain),
            "eager, hook": call(pipe.unet),
            "eager, none": call(plain_unet),
        }
        start = time.perf_counter()
        outputs = {name: fn() for name, fn in variants.items()}  # compiles; warms up
        compile_seconds = time.perf_counter() - start
        for fn in variants.values():
            fn()
        edited = erasure.edited_tokens
        timed = _timer(device)
        reps = 20 if quick else 200
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):  # interleaved: a shared machine's drifts hit every variant alike
            for name, fn in variants.items():
                times[name].append(timed(fn))
    finally:
        erasure.remove()
    median = {name: statistics.median(v) for name, v in times.items()}
    # What was timed did erase, and compiled as eager: else the ratio would mean nothing.
    diff = float((outputs["compiled, hook"] - outputs["eager, hook"]).abs().max())
    changed = float((outputs["eager, hook"] - outputs["eager, none"]).abs().max())
    logger.info("compile medians (s): %s; compiled vs eager %.2e; edit %.2e", median, diff,
                changed)  # fmt: skip
    shape = (
        f"{'micro' if quick else 'tiny SD pipeline'} UNet, {tuple(x.shape)} latents (CFG batch "
        f"2), hookpoint {HOOKPOINT} ({sae.W_dec.shape[1]} wide), SAE 128 latents k 8, 32 selected "
        f"latents with threshold -1 (every token edited), {device}"
    )
    command = reproduce("compile", quick, device)
    compiled_ratio = median["compiled, hook"] / median["compiled, none"]
    return [
        Row(
            benchmark="compile",
            what="graph breaks of the hooked UNet (torch._dynamo.explain)",
            ours=float(breaks),
            baseline=None,
            unit="",
            target="0",
            met=breaks == 0,
            command=command,
            notes=f"{shape}; default edit path, which is the dense one under compilation",
            extra={"graph_breaks": breaks},
        ),
        Row(
            benchmark="compile",
            what=f"UNet call compiled ({backend}), with hook / without",
            ours=median["compiled, hook"],
            baseline=median["compiled, none"],
            unit="s/call",
            target="<= 1.02x",
            met=compiled_ratio <= 1.02,
            command=command,
            notes=f"{shape}; medians of {reps} interleaved calls; compiling took "
            f"{compile_seconds:.1f} s; compiled vs eager output, max abs diff {diff:.2e}; "
            f"edit changes the output by up to {changed:.2e}; {edited} tokens edited",
            extra={"backend": backend, "graph_breaks": breaks, "max_abs_diff_vs_eager": diff,
                   "edit_max_abs_change": changed, "edited_tokens": edited,
                   "compile_seconds": compile_seconds, "medians": median},  # fmt: skip
        ),
        Row(
            benchmark="compile",
            what="UNet call eager, with hook / without",
            ours=median["eager, hook"],
            baseline=median["eager, none"],
            unit="s/call",
            target="",
            met=None,
            command=command,
            notes=f"{shape}; medians of {reps} interleaved calls, for reference",
        ),
    ]
