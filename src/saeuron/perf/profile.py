"""Where the time of one erased sampling run on MiniCanvas goes.

cProfile over a whole run (pipeline call with the erasure), then the wall time attributed
to the parts a reader can act on: the UNet outside the hook, the erase hook itself, the
text encoder, the VAE decode, the scheduler, and everything else (the pipeline's own
Python, image conversion).
"""

from __future__ import annotations

import cProfile
import logging
import pstats
import time
from typing import Any

import torch

from saeuron.erasure.technique import SAeUron
from saeuron.perf import BENCHMARKS, Row, reproduce

logger = logging.getLogger(__name__)


# (label, file fragment, function name): cumulative time of the first match.
PARTS = (
    ("erase hook", "saeuron/erase.py", "__call__"),
    ("denoising-step tracker", "saeuron/hookpoints.py", "pre_hook"),
    ("UNet forward", "unets/unet_2d_condition.py", "forward"),
    ("text encoder", "clip/modeling_clip.py", "forward"),
    ("VAE decode", "autoencoders/", "decode"),
    ("scheduler step", "schedulers/scheduling_ddim.py", "step"),
)


def _cumulative(stats: pstats.Stats, fragment: str, name: str) -> float:
    best = 0.0
    for (filename, _, func), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and fragment in filename.replace("\\", "/"):
            best = max(best, cumtime)
    return best


def profile_run(images: int = 4, steps: int = 20) -> dict[str, Any]:
    tech = SAeUron(erase_concept="moon", model="minicanvas", device="cpu",
                   num_inference_steps=steps, batch_size=images)  # fmt: skip
    tech.pipe.set_progress_bar_config(disable=True)
    prompts = [f"a moon, {s} style" for s in ("striped", "dotted", "neon", "pastel")][:images]
    tech.generate(prompts, seed=0)  # warm-up
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    tech.generate(prompts, seed=0)
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    parts = {label: _cumulative(stats, frag, name) for label, frag, name in PARTS}
    # The hook runs inside the UNet's forward: report the UNet without it.
    parts["UNet forward"] = max(parts["UNet forward"] - parts["erase hook"], 0.0)
    total = float(getattr(stats, "total_tt", wall))
    parts["other"] = max(total - sum(parts.values()), 0.0)
    top = sorted(
        ((cum, f"{func} ({filename.rsplit('/', 1)[-1]}:{line})")
         for (filename, line, func), (_, _, tt, cum, _) in stats.stats.items()),  # type: ignore[attr-defined]
        reverse=True,
    )[:15]  # fmt: skip
    return {"wall": wall, "profiled_total": total, "parts": parts,
            "top_cumulative": [(round(c, 4), n) for c, n in top]}  # fmt: skip


@BENCHMARKS.register("profile")
def run(quick: bool, device: str) -> list[Row]:
    torch.manual_seed(0)
    result = profile_run(images=2 if quick else 4, steps=5 if quick else 20)
    total = result["profiled_total"]
    shares = ", ".join(f"{k} {v / total:.1%}" for k, v in result["parts"].items())
    logger.info("profile: %s", result)
    hook = result["parts"]["erase hook"]
    return [
        Row(
            benchmark="profile",
            what="erased MiniCanvas run: share of time in the erase hook",
            ours=hook,
            baseline=total,
            unit="s",
            target="",
            met=None,
            command=reproduce("profile", quick, device),
            notes=f"{'2 images, 5' if quick else '4 images, 20'} steps, CPU, cProfile; {shares}",
            extra=result,
        )
    ]
