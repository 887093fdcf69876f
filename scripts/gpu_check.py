"""The checks only a GPU can run, as one script: erasure in half precision, offloaded and
compiled pipelines, the dense edit path without host syncs, and its overhead under compile.

Tiny pipelines built from config only (no downloads); a few minutes on one GPU::

    scripts/gpu_check.sh                      # CUDA
    scripts/gpu_check.sh --device cpu --quick # what a CPU can check; CUDA-only checks skip

Prints one JSON summary (every check: pass, fail or skip, with its numbers or reason) and
exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from saeuron.erasure.erase import attach, erase
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tiny import build_tiny_sd
from saeuron.perf import compiled as compile_bench
from saeuron.sae import Sae, SaeConfig

HOOK = "unet.up_blocks.1.attentions.1"


class Skip(Exception):
    """A check that cannot run here; the message says why."""


def make_sae(width: int = 32) -> Sae:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=width, num_latents=4 * width, k=8))
    sae.meta["hookpoint"] = HOOK
    return sae


def firing(sae: Sae) -> ConceptFeatures:
    # A quarter of the latents at threshold 0: certain to fire on random weights.
    return ConceptFeatures.from_latents("c", list(range(0, sae.num_latents, 4)), threshold=0.0,
                                        meta={SAE_FINGERPRINT: sae.fingerprint()})


def unreachable(sae: Sae) -> ConceptFeatures:
    return ConceptFeatures.from_latents("c", list(range(0, sae.num_latents, 4)), threshold=1e6,
                                        meta={SAE_FINGERPRINT: sae.fingerprint()})


def sample(pipe: Any, steps: int = 3) -> np.ndarray:
    out = pipe("a cat", num_inference_steps=steps, guidance_scale=7.5, output_type="np",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    return np.asarray(out.images, dtype=np.float32)


def erase_and_compare(pipe: Any, sae: Sae) -> dict[str, Any]:
    """Plain, erased and hooked-but-unedited images of one pipeline; raises on a failure."""
    plain = sample(pipe)
    with erase(pipe, sae, firing(sae), multiplier=-20.0) as handle:
        erased = sample(pipe)
    with erase(pipe, sae, unreachable(sae), multiplier=-20.0, warn_unedited=False):
        unerased = sample(pipe)
    change = float(np.abs(erased - plain).mean())
    result = {"edited_tokens": handle.edited_tokens, "mean_abs_change": change}
    if not np.isfinite(erased).all():
        raise AssertionError(f"erased image not finite: {result}")
    if change <= 1e-3 or handle.edited_tokens == 0:
        raise AssertionError(f"erasing did not change the image: {result}")
    if not np.array_equal(unerased, plain):
        raise AssertionError("hooked but unedited image differs from the stock one")
    return result


def check_dtype(device: str, dtype: torch.dtype) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        pipe = build_tiny_sd().to(device)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
        sae = make_sae()
        try:
            sample(pipe, steps=1)
        except RuntimeError as err:
            raise Skip(f"the stock pipeline does not run in {dtype} on {device}: {err}") from err
        result = erase_and_compare(pipe, sae)
        if sae.dtype != torch.float32:
            raise AssertionError("the SAE object changed dtype")
        return result

    return run


def _offloaded_erasure(device: str, offload: str) -> dict[str, Any]:
    """Erase on a pipeline with ``offload`` (a diffusers ``enable_*`` method) and compare with
    the same erasure on a pipeline that sits on ``device``."""
    sae = make_sae()
    reference = build_tiny_sd().to(device)
    with erase(reference, sae, firing(sae), multiplier=-20.0):
        expected = sample(reference)
    pipe = build_tiny_sd()
    getattr(pipe, offload)(device=device)
    result = erase_and_compare(pipe, sae)
    with erase(pipe, sae, firing(sae), multiplier=-20.0):
        got = sample(pipe)
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise AssertionError(f"offloaded erasure differs from on-device: max {diff:.2e}")
    return {**result, "max_abs_diff_vs_on_device": diff}


def check_model_offload(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        return _offloaded_erasure(device, "enable_model_cpu_offload")

    return run


def check_sequential_offload(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        if not device.startswith("cuda"):
            # accelerate moves each weight to 'meta' after its forward; with the CPU as the
            # execution device that move fails in the stock pipeline, hooks or not.
            raise Skip("sequential CPU offload needs an accelerator as the execution device")
        return _offloaded_erasure(device, "enable_sequential_cpu_offload")

    return run


def micro_pipe(device: str) -> tuple[Any, Sae]:
    pipe = build_tiny_sd()
    pipe.unet = compile_bench.micro_unet()
    pipe = pipe.to(device)
    return pipe, make_sae(width=8)


def check_compile(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        backend = "aot_eager" if quick and not device.startswith("cuda") else "inductor"
        pipe, sae = micro_pipe(device)
        per_step = ConceptFeatures(
            "c", indices=torch.tensor([[0, 3, 6], [9, 12, 15], [18, 21, 24]]),
            mean=torch.ones(3, 3), threshold=torch.zeros(3, 3),
            meta={SAE_FINGERPRINT: sae.fingerprint()},
        )  # fmt: skip

        def latents() -> np.ndarray:
            out = pipe("a cat", num_inference_steps=3, guidance_scale=7.5, height=16, width=16,
                       generator=torch.Generator().manual_seed(0), output_type="latent")
            return out.images.float().cpu().numpy()  # fmt: skip

        plain = latents()
        with erase(pipe, sae, per_step, multiplier=-20.0):
            eager = latents()
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        eager_unet = pipe.unet
        pipe.unet = torch.compile(eager_unet, backend=backend)
        erasure = attach(pipe, sae, per_step, multiplier=-20.0)
        try:
            compiled = latents()
            again = latents()
        finally:
            erasure.remove()
            pipe.unet = eager_unet
        graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        diff = float(np.abs(compiled - eager).max())
        result = {"backend": backend, "unique_graphs": graphs, "max_abs_diff_vs_eager": diff,
                  "edit_max_abs_change": float(np.abs(eager - plain).max())}  # fmt: skip
        tolerance = 1e-3 if backend == "inductor" else 1e-5  # inductor fuses, reorders sums
        if diff > tolerance or not np.array_equal(compiled, again):
            raise AssertionError(f"compiled erasure differs from eager: {result}")
        if graphs != 1:
            raise AssertionError(f"expected one graph for every step: {result}")
        if result["edit_max_abs_change"] <= 1e-3:
            raise AssertionError(f"the edit did not change the latents: {result}")
        return result

    return run


def check_graph_breaks(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        pipe, sae, features, inputs = compile_bench.setup(device, quick)
        per_rule = {
            rule: compile_bench.graph_breaks(pipe, sae, features, inputs, rule)
            for rule in compile_bench.MULTIPLIERS
        }
        if any(per_rule.values()):
            raise AssertionError(f"graph breaks in the hooked UNet, per rule: {per_rule}")
        return {"graph_breaks": max(per_rule.values()), "per_rule": per_rule}

    return run


def check_no_host_sync(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        if not device.startswith("cuda"):
            raise Skip("host syncs exist only with an accelerator")
        pipe = build_tiny_sd().to(device)
        sae = make_sae()
        result: dict[str, Any] = {}
        for scope, module in (("hooked block", resolve_module(pipe, HOOK)),
                              ("whole UNet", pipe.unet)):  # fmt: skip
            # prepend: strict from before the tracker's own pre-hook to after the edit.
            on = module.register_forward_pre_hook(
                lambda *a: torch.cuda.set_sync_debug_mode("error"), prepend=True
            )
            erasure = attach(pipe, sae, firing(sae), multiplier=-20.0, edit_path="dense")
            off = module.register_forward_hook(lambda *a: torch.cuda.set_sync_debug_mode(0))
            try:
                sample(pipe, steps=2)
                result[scope] = "no sync"
            except RuntimeError as err:
                result[scope] = f"synced: {str(err).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
                on.remove()
                off.remove()
                erasure.remove()
        if result["hooked block"] != "no sync":
            raise AssertionError(f"the dense edit syncs with the host: {result}")
        if result["whole UNet"] != "no sync":
            # The stock UNet may sync by itself; only the hooked block is ours.
            pipe2 = build_tiny_sd().to(device)
            on = pipe2.unet.register_forward_pre_hook(
                lambda *a: torch.cuda.set_sync_debug_mode("error"), prepend=True
            )
            off = pipe2.unet.register_forward_hook(lambda *a: torch.cuda.set_sync_debug_mode(0))
            try:
                sample(pipe2, steps=2)
                stock = "no sync"
            except RuntimeError as err:
                stock = f"synced: {str(err).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
                on.remove()
                off.remove()
            result["stock UNet, no hook"] = stock
            if stock == "no sync":
                raise AssertionError(f"the hooked UNet syncs, the stock one does not: {result}")
        return result

    return run


def check_overhead(device: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        rows = compile_bench.run(quick, device)
        out = {row.what: {"ours": row.ours, "baseline": row.baseline, "ratio": row.ratio,
                          "target": row.target, "met": row.met} for row in rows}  # fmt: skip
        # Reported, not failed on: a timing is a measurement, and a shared CPU is noisy.
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="smaller timings and compiles")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"device": device, "ok": False, "error": "CUDA is not available"}))
        return 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    checks: dict[str, Callable[[bool], dict[str, Any]]] = {
        "fp16 erasure": check_dtype(device, torch.float16),
        "bf16 erasure": check_dtype(device, torch.bfloat16),
        "fp32 erasure": check_dtype(device, torch.float32),
        "model CPU offload": check_model_offload(device),
        "sequential CPU offload": check_sequential_offload(device),
        "torch.compile erases as eager, one graph": check_compile(device),
        "graph breaks on the dense path": check_graph_breaks(device),
        "dense path without host sync": check_no_host_sync(device),
        "erase overhead, eager and compiled": check_overhead(device),
    }
    if args.only:
        unknown = [name for name in args.only if name not in checks]
        if unknown:
            parser.error(f"unknown checks {unknown}; allowed: {list(checks)}")
        checks = {name: checks[name] for name in args.only}
    results: dict[str, Any] = {}
    for name, check in checks.items():
        start = time.perf_counter()
        try:
            results[name] = {"status": "pass", **check(args.quick)}
        except Skip as why:
            results[name] = {"status": "skip", "reason": str(why)}
        except Exception as err:  # every failure is reported, then the next check runs
            results[name] = {"status": "fail", "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc(limit=4)}  # fmt: skip
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {results[name]['status']} ({results[name]['seconds']} s)",
              file=sys.stderr)  # fmt: skip
    ok = all(r["status"] != "fail" for r in results.values())
    summary = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "quick": args.quick,
        "ok": ok,
        "checks": results,
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
