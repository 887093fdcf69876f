"""Activation capture: peak memory against the number of prompts, bytes per value, throughput.

``run_cache`` samples the random-weight ``tiny-sd`` pipeline (built from config, offline) at
32 x 32 px and stores ``unet.up_blocks.1.attentions.0`` (8 x 8 tokens of 32 channels per
image, step and CFG half; larger images make the CPU run take minutes per prompt) for N
prompts, each N in a fresh Python process so that the peak resident set size (``VmHWM``,
see :func:`peak_rss_kib`) belongs to that run alone. ``max_shard_mb`` is small, so every
run writes several shards and the claim under test, that memory holds one shard's prompts
and not the whole capture, is exercised.

* peak RSS per N, and peak(N max) / peak(N min): flat when <= 1.10;
* bytes per stored value: the shard files' bytes over the number of activation values, at
  the largest N. fp16 is 2.0 bytes; each token also stores its step (int16) and prompt
  (int32), 6 / d_in bytes per value, and every file has a JSON header;
* throughput: tokens and prompts per second of the largest run, and the marginal rate
  between the smallest and largest runs, which leaves out the fixed start-up (imports,
  building the pipeline) that both pay.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from saeuron.perf import BENCHMARKS, Row, reproduce
from saeuron.training.capture import CacheConfig, run_cache

logger = logging.getLogger(__name__)

MODEL = "tiny-sd"
HOOKPOINT = "unet.up_blocks.1.attentions.0"
FLAT_LIMIT = 1.10
"""Peak RSS at the largest N may exceed the smallest N's by at most 10% to count as flat."""
BYTES_LIMIT = 2.5
"""fp16 (2.0) plus the per-token index and headers must stay under this many bytes/value."""
FULL_NS = (8, 32, 128)
QUICK_NS = (4, 16)


def _prompts(n: int) -> list[str]:
    # Distinct prompts so that nothing could be deduplicated or cached between them.
    subjects = ["cat", "dog", "car", "tree", "house", "boat", "bird", "moon"]
    styles = ["photo", "painting", "sketch", "render"]
    return [f"a {styles[i % len(styles)]} of a {subjects[i % len(subjects)]}, number {i}"
            for i in range(n)]


def peak_rss_kib() -> int:
    """This process's peak resident set, in KiB.

    Linux's ``VmHWM`` when there is one: ``ru_maxrss`` survives ``execve``, so a child of a
    process that once held a large model (the erase benchmark's UNet) would report the
    parent's peak, not its own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child_main(argv: list[str] | None = None) -> None:
    """Entry point of one measured run (a fresh process): capture, then write the numbers.

    ``argv``: ``[settings_json, result_path]``. Kept free of the benchmark registry's
    import-time side effects beyond ``saeuron.perf`` itself.
    """
    settings, result_path = json.loads((argv or sys.argv[1:])[0]), (argv or sys.argv[1:])[1]

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])

    start = time.perf_counter()
    cfg = CacheConfig.from_dict(settings["cache"])
    manifest = run_cache(cfg)
    seconds = time.perf_counter() - start
    out = Path(cfg.out)
    shard_files = sorted(out.glob("shard_*.safetensors"))
    result = {
        "seconds": seconds,
        "peak_rss_kib": peak_rss_kib(),
        "n_tokens": int(manifest["n_tokens"]),
        "d_in": int(manifest["d_in"]),
        "n_shards": len(shard_files),
        "shard_bytes": sum(p.stat().st_size for p in shard_files),
        "prompts_per_shard": int(manifest["prompts_per_shard"]),
    }
    if torch.cuda.is_available() and str(settings["cache"].get("device", "")).startswith("cuda"):
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


_CHILD = "import sys; from saeuron.perf.capture import child_main; child_main(sys.argv[1:])"


def capture_once(n_prompts: int, folder: Path, device: str, num_inference_steps: int,
                 max_shard_mb: float, batch_size: int, threads: int,
                 size: int) -> dict[str, Any]:
    """One capture of ``n_prompts`` in a fresh process; its measurements."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(_prompts(n_prompts)) + "\n", encoding="utf-8")
    settings = {
        "threads": threads,
        "cache": {
            "model": MODEL, "hookpoint": HOOKPOINT, "prompts": str(prompts),
            "out": str(folder / "acts"), "num_inference_steps": num_inference_steps,
            "guidance_scale": 7.5, "guidance_half": "both", "dtype": "float16",
            "max_shard_mb": max_shard_mb,
            "batch_size": batch_size, "device": device, "height": size, "width": size,
        },
    }
    result_path = folder / "result.json"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(settings), str(result_path)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(
            f"capture of {n_prompts} prompts failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["n_prompts"] = n_prompts
    logger.info("capture bench: %d prompts, %d tokens, %d shards, peak RSS %.0f MiB, %.1f s",
                n_prompts, result["n_tokens"], result["n_shards"],
                result["peak_rss_kib"] / 1024, result["seconds"])
    return result


def measure(ns: tuple[int, ...], device: str, num_inference_steps: int = 10,
            max_shard_mb: float = 0.25, batch_size: int = 4, threads: int | None = None,
            size: int = 32, jobs: int = 1) -> list[dict[str, Any]]:
    """Capture each N of ``ns`` in its own process; one result per N, in order.

    ``jobs`` > 1 runs that many captures at once: peak RSS stays per process, but the
    timings then share the cores (for tests, never for the throughput rows).
    """
    if threads is None:
        # Random-weight tiny models on a CPU: a second OpenMP thread mostly adds
        # oversubscription when other jobs share the cores (see tests/training/test_capture.py).
        threads = 1 if device == "cpu" else 0
    with tempfile.TemporaryDirectory(prefix="saeuron-bench-capture-") as tmp:
        def one(n: int) -> dict[str, Any]:
            return capture_once(n, Path(tmp) / f"n{n}", device, num_inference_steps,
                                max_shard_mb, batch_size, threads, size)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(one, ns))


def rows_from(results: list[dict[str, Any]], command: str, device: str,
              num_inference_steps: int, max_shard_mb: float, size: int) -> list[Row]:
    first, last = results[0], results[-1]
    how = (f"{MODEL} {HOOKPOINT} at {size}x{size} px on {device}, {num_inference_steps} "
           f"steps, both CFG halves, fp16, max_shard_mb {max_shard_mb}")
    # What keeping every token in memory would add at the largest N: the scale that the
    # flatness limit has to be read against.
    held_mib = last["n_tokens"] * (last["d_in"] * 2 + 6) / 2**20
    rows = [
        Row("capture", f"peak RSS, {r['n_prompts']} prompts", r["peak_rss_kib"] / 1024, None,
            "MiB", "", None, command,
            f"peak RSS (VmHWM) of a fresh process running run_cache ({how}); "
            f"{r['n_shards']} shards "
            f"of {r['prompts_per_shard']} prompts, {r['n_tokens']} tokens",
            dict(r))
        for r in results
    ]
    ratio = last["peak_rss_kib"] / first["peak_rss_kib"]
    rows.append(Row(
        "capture", f"peak RSS {last['n_prompts']}/{first['n_prompts']} prompts",
        last["peak_rss_kib"] / 1024, first["peak_rss_kib"] / 1024, "MiB",
        f"<= {FLAT_LIMIT:.2f}x (flat)", ratio <= FLAT_LIMIT, command,
        f"flat means peak RSS at {last['n_prompts']} prompts within "
        f"{FLAT_LIMIT - 1:.0%} of {first['n_prompts']} prompts' ({how}); includes the "
        f"interpreter, torch and the pipeline; holding all {last['n_tokens']} tokens would "
        f"add {held_mib:.0f} MiB ({held_mib * 1024 / first['peak_rss_kib']:.0%})",
        {"ns": [r["n_prompts"] for r in results]},
    ))
    values = last["n_tokens"] * last["d_in"]
    per_value = last["shard_bytes"] / values
    index = 6 / last["d_in"]
    rows.append(Row(
        "capture", "bytes per stored value (fp16)", per_value, None, "bytes/value",
        f"<= {BYTES_LIMIT} (2.0 + index + header)", 2.0 <= per_value <= BYTES_LIMIT, command,
        f"shard file bytes / activation values at {last['n_prompts']} prompts "
        f"({last['n_shards']} files, d_in {last['d_in']}): 2.0 fp16 + {index:.3f} per-token "
        f"step/prompt index + {per_value - 2.0 - index:.4f} safetensors header",
        {"shard_bytes": last["shard_bytes"], "values": values, "index_bytes_per_value": index},
    ))
    tokens_s = last["n_tokens"] / last["seconds"]
    prompts_s = last["n_prompts"] / last["seconds"]
    marginal: dict[str, float] = {}
    if len(results) > 1 and last["seconds"] > first["seconds"]:
        dt = last["seconds"] - first["seconds"]
        marginal = {
            "marginal_tokens_per_s": (last["n_tokens"] - first["n_tokens"]) / dt,
            "marginal_prompts_per_s": (last["n_prompts"] - first["n_prompts"]) / dt,
        }
    extra = {"tokens_per_s": tokens_s, "prompts_per_s": prompts_s, **marginal,
             "seconds": last["seconds"]}
    margin_note = (
        f"; marginal rate {first['n_prompts']}->{last['n_prompts']} prompts (start-up left "
        f"out): {marginal['marginal_tokens_per_s']:.0f} tokens/s, "
        f"{marginal['marginal_prompts_per_s']:.2f} prompts/s" if marginal else ""
    )
    what = f"run_cache wall time at {last['n_prompts']} prompts incl. start-up ({how})"
    rows.append(Row("capture", f"throughput, {last['n_prompts']} prompts", tokens_s, None,
                    "tokens/s", "", None, command, what + margin_note, extra))
    rows.append(Row("capture", f"throughput, {last['n_prompts']} prompts", prompts_s, None,
                    "prompts/s", "", None, command, what, extra))
    return rows


@BENCHMARKS.register("capture")
def run(quick: bool, device: str) -> list[Row]:
    """Peak RSS against N prompts, bytes per stored value and throughput of run_cache."""
    ns = QUICK_NS if quick else FULL_NS
    steps, shard_mb, size = (4, 0.05, 32) if quick else (25, 0.5, 32)
    results = measure(ns, device, num_inference_steps=steps, max_shard_mb=shard_mb, size=size)
    return rows_from(results, reproduce("capture", quick, device), device, steps, shard_mb, size)
