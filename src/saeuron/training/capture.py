"""``saeuron cache``: sample with the stock pipeline and store one hookpoint's activations.

A forward hook on the hookpoint records the tokens of the selected CFG rows at the selected
denoising steps; nothing about sampling changes. Prompts are cut into fixed groups of
``prompts_per_shard`` (in ``plan.json``, written once); each group becomes one shard, so a
rerun with the same settings skips finished groups and memory never holds more than one
group. Under ``accelerate launch`` group ``g`` belongs to process ``g % num_processes``.

A hookpoint inside a prompt encoder (``text_encoder.final_layer_norm``) runs once per
prompt, not per step: there the encoder alone runs on the tokenized prompts, and each
prompt's tokens are recorded as step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch import Tensor, nn
from tqdm.auto import tqdm

from saeuron.models.denoising import DenoiseState, track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.layout import check_model_inputs
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import encode_prompts
from saeuron.models.sampling import check_schedule, use_scheduler
from saeuron.models.sites import renamed_settings
from saeuron.models.tokens import (
    GUIDANCE_SITE,
    conditional_rows,
    input_tensor,
    output_tensor,
    to_tokens,
)
from saeuron.training.capture_config import STORAGE_DTYPE_NAMES, CacheConfig, parse_steps
from saeuron.training.distributed import use_cpu_group
from saeuron.training.shards import (
    MANIFEST,
    add_checksum,
    check_shard,
    finished_shards,
    sidecar_file,
    tensor_bytes,
    write_manifest,
    write_shard,
)
from saeuron.utils.config import ConfigError
from saeuron.utils.devices import resolve_device
from saeuron.utils.files import CAPTURE_PLAN, SHARD_PREFIX
from saeuron.utils.locks import FolderLock
from saeuron.utils.prompts import read_prompts
from saeuron.utils.storage import Folder

# The settings are re-exported from the torch-free module that --help reads.
__all__ = [
    "PLAN",
    "PLAN_VERSION",
    "STORAGE_DTYPES",
    "CacheConfig",
    "cache_settings",
    "compute_dtype",
    "parse_steps",
    "run_cache",
]

log = logging.getLogger(__name__)

PLAN = CAPTURE_PLAN
PLAN_VERSION = 1
STORAGE_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in STORAGE_DTYPE_NAMES
}
# Per-token bookkeeping stored beside the activations: "step" int16 + "prompt" int32.
_INDEX_BYTES = 2 + 4
PROMPT_CALL = DenoiseState(step=0, num_steps=1, in_loop=True)
"""What a prompt encoder's capture hook is told: every call is step 0, no CFG batch."""


def compute_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA, where SD is routinely run so; fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def cache_settings(cfg: CacheConfig, prompts: list[str]) -> dict[str, Any]:
    """What determines the stored data; a resume must match these exactly.

    ``batch_size`` and ``device`` are left out: they change speed, not which tokens land in
    which shard.
    """
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    return {
        "model": cfg.model,
        "hookpoint": cfg.hookpoint,
        "activation_site": cfg.activation_site,
        "dtype": cfg.dtype,
        # A prompt encoder's capture samples nothing: one call per prompt.
        "num_inference_steps": 1 if cfg.prompt_encoder else cfg.sampling.steps,
        "guidance_scale": cfg.sampling.guidance,
        "scheduler": cfg.sampling.scheduler,
        "steps": cfg.step_indices(),
        "guidance_half": cfg.guidance_half,
        "tokens_per_image": cfg.tokens_per_image,
        "seed": cfg.sampling.seed,
        "height": cfg.sampling.height,
        "width": cfg.sampling.width,
        "max_shard_mb": cfg.max_shard_mb,
        "n_prompts": len(prompts),
        "prompts_sha256": digest,
    }


def _read_plan(out: Folder) -> dict[str, Any] | None:
    try:
        return out.read_json(PLAN)
    except FileNotFoundError:
        return None


def _check_plan(plan: dict[str, Any], settings: dict[str, Any], out: Folder) -> None:
    if plan.get("version") != PLAN_VERSION:
        raise ConfigError(
            "out",
            f"{out.path(PLAN)} has format version {plan.get('version')!r}, this saeuron writes "
            f"{PLAN_VERSION}; pick another folder",
        )
    old = renamed_settings(plan.get("settings", {}))
    diffs = [
        f"{key}: {old.get(key)!r} in the folder, {settings.get(key)!r} now"
        for key in sorted(set(old) | set(settings))
        if old.get(key) != settings.get(key)
    ]
    if diffs:
        raise ConfigError(
            "out",
            f"{out} holds a capture with different settings ({'; '.join(diffs)}); "
            "rerun with the same settings to resume, or pick another folder",
        )


def _generators(seed: int, indices: range) -> list[torch.Generator]:
    # CPU generators keep the initial noise identical on every device.
    return [torch.Generator().manual_seed(seed + i) for i in indices]


def _size_kwargs(cfg: CacheConfig) -> dict[str, int]:
    s = cfg.sampling
    return {k: v for k, v in (("height", s.height), ("width", s.width)) if v is not None}


def _probe(pipe: Any, module: nn.Module, cfg: CacheConfig, prompt: str) -> tuple[int, int, int]:
    """One 1-step sample: (tokens per image, width d_in, recorded rows per prompt)."""
    shapes: list[tuple[int, int, int]] = []
    if cfg.prompt_encoder:

        def record(mod: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            x = _site_tokens(mod, output, args, kwargs, cfg.activation_site)
            shapes.append((x.shape[0], x.shape[1], x.shape[2]))

        handle = module.register_forward_hook(record, with_kwargs=True)
        try:
            encode_prompts(pipe, cfg.prompt_encoder, [prompt])
        finally:
            handle.remove()
        if len(shapes) != 1:
            raise ConfigError(
                "hookpoint", f"{cfg.hookpoint} ran {len(shapes)} times for one prompt; pick a "
                "module that runs once per encoder call"
            )  # fmt: skip
        return shapes[0][1], shapes[0][2], 1

    with track_denoising(pipe) as state:

        def hook(mod: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            if state.substep:
                return  # a second-order scheduler's second call of the step
            x = _site_tokens(mod, output, args, kwargs, cfg.activation_site)
            if cfg.activation_site == GUIDANCE_SITE:
                shapes.append((x.shape[0] // 2, x.shape[1], x.shape[2]))
                return
            rows = conditional_rows(x.shape[0], state.guidance, cfg.guidance_half)
            shapes.append((len(range(x.shape[0])[rows]), x.shape[1], x.shape[2]))

        handle = module.register_forward_hook(hook, with_kwargs=True)
        try:
            pipe(
                [prompt],
                num_inference_steps=1,
                guidance_scale=cfg.sampling.guidance,
                generator=_generators(cfg.sampling.seed, range(1)),
                output_type="latent",
                **_size_kwargs(cfg),
            )
        finally:
            handle.remove()
    if not shapes:
        raise ConfigError("hookpoint", f"{cfg.hookpoint} never ran while sampling")
    if len(shapes) > 1:
        raise ConfigError(
            "hookpoint",
            f"{cfg.hookpoint} ran {len(shapes)} times in one denoising step; "
            "pick a module that runs once per UNet call",
        )
    rows, n_tokens, d_in = shapes[0]
    return n_tokens, d_in, rows


def _site_tokens(
    module: nn.Module, output: Any, args: Any, kwargs: dict[str, Any], site: str
) -> Tensor:
    x = to_tokens(output_tensor(module, output))
    if site == "update":
        before = to_tokens(input_tensor(module, args, kwargs))
        if before.shape != x.shape:
            raise ConfigError(
                "activation_site",
                f"'update' needs input and output of the same shape; got "
                f"{tuple(before.shape)} -> {tuple(x.shape)}",
            )
        x = x - before
    return x


def _subsample_seed(seed: int, prompt: int, step: int, half: int) -> int:
    # Keyed by what the token *is*, not by batch position, so reruns, resumes and other
    # process counts pick the same tokens.
    state = np.random.SeedSequence([seed, prompt, step, half]).generate_state(1, np.uint64)
    return int(state[0])


class _Recorder:
    """Forward hook collecting the current group's tokens on the CPU in storage dtype."""

    def __init__(self, cfg: CacheConfig, state: DenoiseState):
        self.cfg = cfg
        self.state = state
        self.steps = set(cfg.step_indices())
        self.prompt_ids = torch.empty(0, dtype=torch.int64)
        self.pieces: dict[tuple[int, int], Tensor] = {}

    def __call__(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        step = self.state.step
        # One record per step: a second-order scheduler's second call is not a new step.
        if step not in self.steps or self.state.substep:
            return
        x = _site_tokens(module, output, args, kwargs, self.cfg.activation_site)
        if self.cfg.activation_site == GUIDANCE_SITE:
            # What the prompt adds: each prompt's conditional row minus its unconditional one.
            x = x[x.shape[0] // 2 :] - x[: x.shape[0] // 2]
        else:
            x = x[conditional_rows(x.shape[0], self.state.guidance, self.cfg.guidance_half)]
        n = len(self.prompt_ids)
        if n == 0 or x.shape[0] % n:
            raise RuntimeError(f"{x.shape[0]} rows at the hookpoint for a batch of {n} prompts")
        # A CFG batch is [uncond; cond], each half in prompt order.
        row_ids = self.prompt_ids.repeat(x.shape[0] // n)
        k = self.cfg.tokens_per_image
        if k:
            index = torch.stack(
                [
                    torch.randperm(
                        x.shape[1],
                        generator=torch.Generator().manual_seed(
                            _subsample_seed(self.cfg.sampling.seed, int(pid), step, row // n)
                        ),
                    )[:k].sort().values
                    for row, pid in enumerate(row_ids)
                ]
            ).to(x.device)
            x = x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
        acts = x.detach().to(self.cfg.storage_dtype).cpu()
        for j, pid in enumerate(self.prompt_ids.tolist()):
            if (pid, step) in self.pieces:
                raise RuntimeError(
                    f"{self.cfg.hookpoint} ran twice in step {step}; pick a module that runs "
                    "once per UNet call"
                )
            # Rows j, j + n, ...: this prompt's rows in each CFG half.
            self.pieces[(pid, step)] = acts[j::n].reshape(-1, acts.shape[2])

    def take(self) -> dict[str, Tensor]:
        """The group's tokens ordered by (prompt, step), whatever the batching was."""
        keys = sorted(self.pieces)
        if not keys:
            raise RuntimeError(f"{self.cfg.hookpoint} recorded nothing at the selected steps")
        acts = torch.cat([self.pieces[k] for k in keys])
        counts = torch.tensor([len(self.pieces[k]) for k in keys])
        self.pieces = {}
        return {
            "activations": acts,
            "step": torch.tensor([k[1] for k in keys], dtype=torch.int16).repeat_interleave(
                counts
            ),
            "prompt": torch.tensor([k[0] for k in keys], dtype=torch.int32).repeat_interleave(
                counts
            ),
        }


def _supports_interrupt(pipe: Any) -> bool:
    params = inspect.signature(pipe.__call__).parameters
    return "callback_on_step_end" in params and hasattr(type(pipe), "interrupt")


def _write_shard(out: Folder, index: int, tensors: dict[str, Tensor], prompts: range) -> None:
    write_shard(out, index, tensors, {"prompts": [prompts.start, prompts.stop]})


def _done_shards(out: Folder, mine: range) -> set[int]:
    """This process's finished shards that match their sidecars.

    A shard whose size or SHA-256 differs from its sidecar is corrupt: its sidecar is removed
    so that it is captured again (and never counted done, even if this run dies). A sidecar
    from before checksums gets the shard's checksum recorded.
    """
    sizes = out.sizes()
    done: set[int] = set()
    for shard in finished_shards(out, only=mine):
        if shard.sha256 is None:
            shard = add_checksum(out, shard)
            log.info("%s: recorded its checksum (captured by an older saeuron)", shard.path)
        reason = check_shard(out, shard, sizes.get(shard.file))
        if reason is not None:
            log.warning("%s does not match its sidecar (%s): capturing it again", shard.path,
                        reason)
            out.remove(sidecar_file(shard.index))
            continue
        done.add(shard.index)
    return done


def _make_plan(
    pipe: Any, module: nn.Module, cfg: CacheConfig, prompts: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    tokens, d_in, rows = _probe(pipe, module, cfg, prompts[0])
    if cfg.tokens_per_image > tokens:
        raise ConfigError(
            "tokens_per_image",
            f"got {cfg.tokens_per_image}; {cfg.hookpoint} has only {tokens} tokens per image",
        )
    kept = cfg.tokens_per_image or tokens
    tokens_per_prompt = len(settings["steps"]) * rows * kept
    bytes_per_prompt = tokens_per_prompt * (d_in * tensor_bytes(cfg.storage_dtype) + _INDEX_BYTES)
    per_shard = max(1, int(cfg.max_shard_mb * 2**20 // bytes_per_prompt))
    if bytes_per_prompt > cfg.max_shard_mb * 2**20:
        log.warning(
            "one prompt yields %.1f MiB, more than max_shard_mb=%s: one prompt per shard",
            bytes_per_prompt / 2**20,
            cfg.max_shard_mb,
        )
    n = len(prompts)
    per_shard = min(per_shard, n)
    return {
        "version": PLAN_VERSION,
        "settings": settings,
        "d_in": d_in,
        "tokens_per_step": tokens,
        "rows_per_prompt": rows,
        "tokens_per_prompt": tokens_per_prompt,
        "prompts_per_shard": per_shard,
        "n_shards": math.ceil(n / per_shard),
    }


def _device(cfg: CacheConfig, state: Any) -> torch.device:
    if state.num_processes > 1:
        # Each launched process owns one device; accelerate knows which.
        wanted = resolve_device(cfg.sampling.device) if cfg.sampling.device else state.device
        if wanted.type == state.device.type:
            return state.device
        return wanted
    return resolve_device(cfg.sampling.device)


def run_cache(cfg: CacheConfig) -> dict[str, Any]:
    """Capture activations into ``cfg.out``; returns the manifest (also ``manifest.json``).

    Runs as one process or as every process of ``accelerate launch``. Finished shards of an
    earlier run with the same settings are kept; different settings raise ConfigError
    before the model loads. The pipeline computes in fp16 on CUDA and fp32 elsewhere;
    ``cfg.dtype`` is only the storage dtype.
    """
    state = PartialState(cpu=use_cpu_group(cfg.sampling.device))
    out = Folder(cfg.out, "out")
    prompts = read_prompts(cfg.prompts, "prompts", limit=cfg.limit, keep_empty=True)
    settings = cache_settings(cfg, prompts)
    plan = _existing_plan(out, settings)
    # One capture per folder: a second one would count the first's shards as its own. The
    # main process holds it for the run's processes (they write only after it has it).
    with contextlib.ExitStack() as held:
        if state.is_main_process and not out.remote:
            held.enter_context(FolderLock(out.local_root))
        return _capture(_Run(cfg, state, out, prompts, settings), plan)


def _existing_plan(out: Folder, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The plan of an earlier capture into ``out`` (None in a new folder), refused when its
    settings differ: checked before the model loads, so a wrong folder fails fast."""
    plan = _read_plan(out)
    if plan is not None:
        _check_plan(plan, settings, out)
    elif any(name.startswith(SHARD_PREFIX) for name in out.sizes()):
        raise ConfigError(
            "out", f"{out} holds shards but no {PLAN}: not a capture folder; pick another"
        )
    return plan


@dataclass(frozen=True)
class _Run:
    """What every step of one process's capture reads; fixed once the folder is checked."""

    cfg: CacheConfig
    state: PartialState
    out: Folder
    prompts: list[str]
    settings: dict[str, Any]


def _capture(run: _Run, plan: dict[str, Any] | None) -> dict[str, Any]:
    """Load the model, agree on the plan, capture this process's shards, write the manifest."""
    device = _device(run.cfg, run.state)
    pipe, module = _load(run.cfg, device)
    plan = _agree_on_plan(run, pipe, module, plan)
    per_shard, n_shards = int(plan["prompts_per_shard"]), int(plan["n_shards"])
    n = len(run.prompts)
    groups = [range(g * per_shard, min(n, (g + 1) * per_shard)) for g in range(n_shards)]
    todo = _todo(run, n_shards)
    _capture_groups(run, pipe, module, plan, groups, todo)
    return _finish(run, plan, device)


def _load(cfg: CacheConfig, device: torch.device) -> tuple[Any, nn.Module]:
    """The pipeline on ``device`` and the hookpoint's module in it."""
    # Checked before loading: a wrong hookpoint or setting is one line, not minutes later.
    check_model_inputs(cfg.resolved_model, cfg.sampling, hookpoints=[cfg.hookpoint])
    pipe = load_pipeline(cfg.resolved_model, device, compute_dtype(device))
    use_scheduler(pipe, cfg.sampling.scheduler)
    check_schedule(pipe, cfg.sampling.steps)
    return pipe, resolve_module(pipe, cfg.hookpoint)


def _agree_on_plan(
    run: _Run, pipe: Any, module: nn.Module, plan: dict[str, Any] | None
) -> dict[str, Any]:
    """The folder's plan, which the main process writes on a first run; every process then
    reads it back, so all of them cut the prompts into the same groups."""
    state, out = run.state, run.out
    if plan is None and state.is_main_process:
        plan = _make_plan(pipe, module, run.cfg, run.prompts, run.settings)
        out.write_json(PLAN, plan)
        log.info(
            "plan: %d prompts, %d per shard, %d shards, d_in %d",
            len(run.prompts),
            plan["prompts_per_shard"],
            plan["n_shards"],
            plan["d_in"],
        )
    state.wait_for_everyone()
    plan = _read_plan(out)
    if plan is None:
        raise RuntimeError(f"{out.path(PLAN)} missing after the main process wrote it")
    _check_plan(plan, run.settings, out)
    return plan


def _todo(run: _Run, n_shards: int) -> list[int]:
    """This process's shards still to capture (group ``g`` is process ``g % processes``'s)."""
    state, out = run.state, run.out
    mine = range(state.process_index, n_shards, state.num_processes)
    done = _done_shards(out, mine)
    todo = [g for g in mine if g not in done]
    if done:
        log.info("resuming: %d of %d shards already done", len(done), len(mine))
    if todo:
        # A manifest means "complete": it goes while any shard is (re)captured.
        out.remove(MANIFEST)
    return todo


def _stop_after(denoise: DenoiseState, last_step: int) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` that ends sampling after ``last_step``."""

    def stop_after_last_step(
        pipeline: Any, i: int, t: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        # Later steps are never recorded: skip their UNet calls. The step is the tracker's,
        # not the loop index ``i`` (PNDM and Heun run more loop iterations than steps).
        if denoise.step >= last_step:
            pipeline._interrupt = True
        return {}

    return stop_after_last_step


def _capture_groups(
    run: _Run,
    pipe: Any,
    module: nn.Module,
    plan: dict[str, Any],
    groups: list[range],
    todo: list[int],
) -> None:
    """Sample each group in ``todo`` with the recording hook on, and write it as its shard."""
    cfg, state = run.cfg, run.state
    interrupt = _supports_interrupt(pipe)
    last_step = run.settings["steps"][-1]
    extra: dict[str, Any] = _size_kwargs(cfg)
    bar = tqdm(
        total=sum(len(groups[g]) for g in todo),
        desc="cache",
        unit="prompt",
        disable=not state.is_local_main_process,
    )
    with track_denoising(pipe) as denoise:
        if interrupt:
            extra["callback_on_step_end"] = _stop_after(denoise, last_step)
        # A prompt encoder is recorded outside any sampling loop, as step 0 without CFG.
        recorder = _Recorder(cfg, PROMPT_CALL if cfg.prompt_encoder else denoise)
        handle = module.register_forward_hook(recorder, with_kwargs=True)
        try:
            for g in todo:
                _sample_group(run, pipe, recorder, groups[g], extra, bar)
                _store_group(run, g, groups[g], recorder.take(), plan)
        finally:
            handle.remove()
            bar.close()


def _sample_group(
    run: _Run, pipe: Any, recorder: _Recorder, group: range, extra: dict[str, Any], bar: Any
) -> None:
    """Run ``group``'s prompts through the model in batches; ``recorder`` keeps the tokens."""
    cfg, prompts = run.cfg, run.prompts
    for start in range(group.start, group.stop, cfg.sampling.batch_size):
        batch = range(start, min(group.stop, start + cfg.sampling.batch_size))
        recorder.prompt_ids = torch.tensor(list(batch), dtype=torch.int64)
        if cfg.prompt_encoder:
            encode_prompts(pipe, cfg.prompt_encoder, [prompts[i] for i in batch])
        else:
            pipe(
                [prompts[i] for i in batch],
                num_inference_steps=cfg.sampling.steps,
                guidance_scale=cfg.sampling.guidance,
                generator=_generators(cfg.sampling.seed, batch),
                output_type="latent",
                **extra,
            )
        bar.update(len(batch))


def _store_group(
    run: _Run, g: int, group: range, tensors: dict[str, Tensor], plan: dict[str, Any]
) -> None:
    """Write group ``g``'s tokens as shard ``g``, once their count is the plan's."""
    expected = len(group) * int(plan["tokens_per_prompt"])
    if tensors["activations"].shape[0] != expected:
        raise RuntimeError(
            f"shard {g}: recorded {tensors['activations'].shape[0]} tokens, "
            f"expected {expected}; does {run.cfg.hookpoint} run once per UNet call?"
        )
    _write_shard(run.out, g, tensors, group)
    log.debug(
        "process %d/%d wrote shard %d (prompts %d-%d)",
        run.state.process_index,
        run.state.num_processes,
        g,
        group.start,
        group.stop - 1,
    )


def _finish(run: _Run, plan: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Once every process is done, the main one checks all shards are there and writes the
    manifest; every process returns it."""
    state, out = run.state, run.out
    state.wait_for_everyone()
    if state.is_main_process:
        present = {s.index for s in finished_shards(out)}
        missing = [g for g in range(int(plan["n_shards"])) if g not in present]
        if missing:
            raise RuntimeError(f"shards {missing} of {out} were not written")
        write_manifest(
            out,
            {
                **run.settings,
                "d_in": plan["d_in"],
                "tokens_per_step": plan["tokens_per_step"],
                "rows_per_prompt": plan["rows_per_prompt"],
                "tokens_per_prompt": plan["tokens_per_prompt"],
                "prompts_per_shard": int(plan["prompts_per_shard"]),
                "prompts_file": str(Path(run.cfg.prompts).resolve()),
                "compute_dtype": str(compute_dtype(device)).removeprefix("torch."),
            },
        )
        log.info("wrote %d shards to %s", int(plan["n_shards"]), out)
    state.wait_for_everyone()
    return out.read_json(MANIFEST)
