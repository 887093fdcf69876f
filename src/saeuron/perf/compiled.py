"""The erasing hook under ``torch.compile``: graph breaks and overhead.

On the tiny Stable Diffusion pipeline (SD 1.x block names, 32-wide
``up_blocks.1.attentions.1``, a CFG batch of 2; ``--quick``: an 8-wide micro UNet with the
same block names) with an SAE of 128 latents and a quarter of them selected with threshold
-1, so every token is a candidate and the edit always runs:

- graph breaks of the hooked UNet under ``torch._dynamo.explain`` (the dense edit path,
  which the hook takes under compilation), for every rule: target 0, since every break
  splits the graph and on CUDA costs a host sync;
- per rule (``scale``, ``ablate``, ``anchor`` into a second concept, ``project``), one UNet
  call compiled with the hook against the same UNet compiled without it (copies with the
  same weights, each compiled once, all timed interleaved): target <= 1.02x. The calls are
  timed in blocks, and the spread of the per-block ratios is reported beside their median:
  two runs of the same table can differ by more than the edit costs;
- the same ratios in eager mode, for reference.

The backend is ``inductor`` on CUDA and in the full CPU run (it needs a C++ compiler), and
``aot_eager`` under ``--quick``, where inductor's compile time would dominate a smoke test.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from diffusers import UNet2DConditionModel

from saeuron.erasure.erase import attach, erase
from saeuron.erasure.erase_config import RULES
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.models.tiny import build_tiny_sd
from saeuron.perf import BENCHMARKS, Row, reproduce
from saeuron.sae import Sae, SaeConfig

logger = logging.getLogger(__name__)

HOOKPOINT = "unet.up_blocks.1.attentions.1"
MULTIPLIERS = {"scale": -20.0, "ablate": 0.0, "anchor": 0.0, "project": 0.0}
"""Each rule's erasing strength (``scale``'s published gamma, the others' full removal)."""


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


def rule_features(features: ConceptFeatures, rule: str) -> ConceptFeatures:
    """``features`` as ``rule`` reads them: ``anchor`` pulls the tokens toward a second
    concept of 16 other latents."""
    if rule != "anchor":
        return features
    anchor = ConceptFeatures.from_latents("a", list(range(2, 128, 8)), mean=1.0,
                                          meta=dict(features.meta))  # fmt: skip
    return features.with_anchor(anchor)


def graph_breaks(
    pipe: Any, sae: Sae, features: ConceptFeatures, inputs: tuple, rule: str = "scale"
) -> int:
    """Graph breaks of ``pipe.unet`` with the erasure attached (the default edit path)."""
    x, t, context = inputs
    torch._dynamo.reset()
    with erase(pipe, sae, rule_features(features, rule), multiplier=MULTIPLIERS[rule],
               rule=rule, warn_unedited=False):  # fmt: skip
        explained = torch._dynamo.explain(pipe.unet)(x, t, encoder_hidden_states=context)
    return int(explained.graph_break_count)


def _interleaved(
    variants: dict[str, Callable[[], Any]], device: str, blocks: int, reps: int
) -> list[dict[str, float]]:
    """Per block, each variant's median call time; calls interleaved round-robin, so a
    shared machine's drifts hit every variant alike."""
    timed = _timer(device)
    medians = []
    for _ in range(blocks):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                times[name].append(timed(fn))
        medians.append({name: statistics.median(v) for name, v in times.items()})
    return medians


class _Timed(NamedTuple):
    """The variants' outputs and timings (per block and overall medians, seconds)."""

    outputs: dict[str, torch.Tensor]
    per_block: list[dict[str, float]]
    median: dict[str, float]
    compile_seconds: float
    edited: dict[str, int]
    blocks: int
    reps: int


def _call(unet: Any, inputs: tuple) -> Callable[[], Any]:
    x, t, context = inputs

    def go() -> Any:
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=context).sample

    return go


def _time_rules(
    pipe: Any, sae: Sae, features: ConceptFeatures, inputs: tuple, backend: str, quick: bool,
    device: str,
) -> _Timed:  # fmt: skip
    """Every rule's hooked UNet and the plain one, compiled and eager, timed interleaved."""
    base_unet = pipe.unet
    # One UNet per rule, all with the same weights: each hook lives on its own copy, so each
    # compiled graph is traced once and none is recompiled when another gains a hook.
    plain_unet = copy.deepcopy(base_unet)
    hooked_unets = {rule: copy.deepcopy(base_unet) for rule in RULES}
    erasures = {}
    torch._dynamo.reset()
    # Copies of one UNet share its forward's code, and by default dynamo does not guard on
    # hooks: without these guards, every copy would run the graph traced first.
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        try:
            for rule, unet in hooked_unets.items():
                pipe.unet = unet
                erasures[rule] = attach(pipe, sae, rule_features(features, rule),
                                        multiplier=MULTIPLIERS[rule], rule=rule)  # fmt: skip
            pipe.unet = base_unet
            variants = {"compiled, none": _call(torch.compile(plain_unet, backend=backend), inputs),
                        "eager, none": _call(plain_unet, inputs)}  # fmt: skip
            for rule, unet in hooked_unets.items():
                variants[f"compiled, {rule}"] = _call(torch.compile(unet, backend=backend), inputs)
                variants[f"eager, {rule}"] = _call(unet, inputs)
            start = time.perf_counter()
            outputs = {name: fn() for name, fn in variants.items()}  # compiles; warms up
            compile_seconds = time.perf_counter() - start
            for fn in variants.values():
                fn()
            edited = {rule: e.edited_tokens for rule, e in erasures.items()}
            blocks, reps = (2, 10) if quick else (10, 60)
            per_block = _interleaved(variants, device, blocks, reps)
        finally:
            for erasure in erasures.values():
                erasure.remove()
            pipe.unet = base_unet
    median = {name: statistics.median(b[name] for b in per_block) for name in variants}
    logger.info("compile medians (s): %s", median)
    return _Timed(outputs, per_block, median, compile_seconds, edited, blocks, reps)


def _ratios(timed: _Timed, mode: str, rule: str) -> tuple[float, list[float]]:
    """The median ratio hooked / plain of ``mode`` (compiled or eager), and each block's."""
    hooked, plain = f"{mode}, {rule}", f"{mode}, none"
    blocks = [b[hooked] / b[plain] for b in timed.per_block]
    return timed.median[hooked] / timed.median[plain], blocks


def _compiled_row(
    timed: _Timed, rule: str, backend: str, breaks: int, shape: str, command: str
) -> Row:
    ratio, blocks = _ratios(timed, "compiled", rule)
    out = timed.outputs
    # What was timed did erase, and compiled as eager: else the ratio would mean nothing.
    diff = float((out[f"compiled, {rule}"] - out[f"eager, {rule}"]).abs().max())
    changed = float((out[f"eager, {rule}"] - out["eager, none"]).abs().max())
    spread = f"{min(blocks):.3f}x-{max(blocks):.3f}x"
    return Row(
        benchmark="compile",
        what=f"UNet call compiled ({backend}), rule {rule}, with hook / without",
        ours=timed.median[f"compiled, {rule}"],
        baseline=timed.median["compiled, none"],
        unit="s/call",
        target="<= 1.02x",
        met=ratio <= 1.02,
        command=command,
        notes=f"{shape}; multiplier {MULTIPLIERS[rule]}; medians of {timed.blocks} blocks of "
        f"{timed.reps} interleaved calls, per-block ratios {spread}; compiling every variant "
        f"took {timed.compile_seconds:.1f} s; compiled vs eager output, max abs diff "
        f"{diff:.2e}; edit changes the output by up to {changed:.2e}; "
        f"{timed.edited[rule]} tokens edited",
        extra={"backend": backend, "rule": rule, "graph_breaks": breaks, "block_ratios": blocks,
               "spread": spread, "max_abs_diff_vs_eager": diff, "edit_max_abs_change": changed,
               "edited_tokens": timed.edited[rule], "compile_seconds": timed.compile_seconds,
               "medians": timed.median},  # fmt: skip
    )


def _eager_row(timed: _Timed, rule: str, shape: str, command: str) -> Row:
    _, blocks = _ratios(timed, "eager", rule)
    return Row(
        benchmark="compile",
        what=f"UNet call eager, rule {rule}, with hook / without",
        ours=timed.median[f"eager, {rule}"],
        baseline=timed.median["eager, none"],
        unit="s/call",
        target="",
        met=None,
        command=command,
        notes=f"{shape}; medians of {timed.blocks} blocks of {timed.reps} interleaved calls, "
        f"per-block ratios {min(blocks):.3f}x-{max(blocks):.3f}x; for reference",
    )


@BENCHMARKS.register("compile")
def run(quick: bool, device: str) -> list[Row]:
    backend = "aot_eager" if quick and not device.startswith("cuda") else "inductor"
    pipe, sae, features, inputs = setup(device, quick)
    breaks = {rule: graph_breaks(pipe, sae, features, inputs, rule) for rule in RULES}
    timed = _time_rules(pipe, sae, features, inputs, backend, quick, device)
    shape = (
        f"{'micro' if quick else 'tiny SD pipeline'} UNet, {tuple(inputs[0].shape)} latents "
        f"(CFG batch 2), hookpoint {HOOKPOINT} ({sae.W_dec.shape[1]} wide), SAE 128 latents "
        f"k 8, 32 selected latents with threshold -1 (every token edited), {device}"
    )
    command = reproduce("compile", quick, device)
    worst = max(breaks.values())
    breaks_row = Row(
        benchmark="compile",
        what="graph breaks of the hooked UNet (torch._dynamo.explain), every rule",
        ours=float(worst),
        baseline=None,
        unit="",
        target="0",
        met=worst == 0,
        command=command,
        notes=f"{shape}; default edit path, which is the dense one under compilation; "
        + ", ".join(f"{rule} {n}" for rule, n in breaks.items()),
        extra={"graph_breaks": worst, "per_rule": breaks},
    )
    return [
        breaks_row,
        *(_compiled_row(timed, rule, backend, breaks[rule], shape, command) for rule in RULES),
        *(_eager_row(timed, rule, shape, command) for rule in RULES),
    ]
