"""Runs an evaluation: images on disk, scores per image, values with intervals, a report.

Layout of ``output_dir``::

    run.json                  the technique and seed the images were sampled with
    report.json, summary.md   every metric's values, 95 % intervals, provenance
    <metric>/items.json       the images the metric asked for (prompt, seed, group, meta)
    <metric>/images/00000.png ...          (and unerased/ for metrics that compare)
    <metric>/images.csv       one row per image: prompt, seed, group, scores, detector output

Images are sampled in fixed chunks of the technique's batch size and each is written
atomically, so a run killed at any moment and started again with the same config samples
only the chunks it had not finished, and ends with the same numbers.

What locks a folder is what changes its images: the technique, its settings and the seed
(``run.json``; the device and the batch size change no image and are free to differ) and
each metric's list of images (``items.json``; a metric's scoring settings are recomputed
from the images on every run). A folder holding images of other settings is refused, naming
each key that differs with both values; a run that produced no image yet locks nothing.

An image with no picture in it (black, one flat colour: what a NaN decodes to) is never
scored as an erasure: each metric counts it as a failure of the technique (not erased where
erasure is measured, not retained where retention is), and the report says how many there
were (``degenerate``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from PIL import Image
from tqdm.auto import tqdm

from saeuron.eval.config import EvalConfig, MetricSpec, within
from saeuron.eval.metrics import METRICS, Item, Metric, MetricError, Requirement
from saeuron.eval.report import (
    bootstrap_interval,
    git_hash,
    summary_markdown,
    versions,
    write_table,
)
from saeuron.eval.requirement import hub_cached, unmet
from saeuron.eval.techniques import Technique, build_technique, check_technique_config
from saeuron.models.resolve import ResolvedModel, ResolvesModel
from saeuron.models.tiny import TINY_MODELS
from saeuron.utils.config import ConfigError
from saeuron.utils.devices import resolve_device
from saeuron.utils.errors import MachineMismatchError, ModelUnavailableError
from saeuron.utils.files import ATTACK_PROMPTS, EVAL_RUN
from saeuron.utils.io import atomic_path, atomic_write_json, check_output_folder
from saeuron.utils.locks import FolderLock
from saeuron.utils.numerics import degenerate_reason
from saeuron.utils.text import read_text

logger = logging.getLogger(__name__)

RUN_FILE = EVAL_RUN


def chunk_size(cfg: EvalConfig) -> int:
    sampling = getattr(cfg.technique, "sampling", None)
    return int(sampling.batch_size) if sampling is not None else 4


# -- plan (--check) -----------------------------------------------------------------------------


def _model_requirement(resolved: ResolvedModel) -> Requirement:
    model = resolved.name
    if model in TINY_MODELS:
        return Requirement(f"model {model}", True, "random-weight test model")
    bundle = resolved.bundle
    if bundle is not None:
        return Requirement(
            f"model {model}", bundle.shipped, "bundled" if bundle.shipped else "not shipped here"
        )
    if Path(model).is_dir():
        ok = (Path(model) / "model_index.json").is_file()
        return Requirement(f"model {model}", ok, "" if ok else "folder lacks model_index.json")
    cached = hub_cached(model, "model_index.json") is not None
    return Requirement(
        f"model {model}", cached, "in the hub cache" if cached else "downloaded from the hub",
        kind="download",
    )


def _device_requirement(device: str | None) -> Requirement | None:
    if device is None or not str(device).startswith("cuda"):
        return None
    ok = torch.cuda.is_available()
    return Requirement(f"device {device}", ok, "" if ok else "no CUDA device on this machine")


MACHINE_FIX = "saeuron eval --device cpu runs it here without changing the file"
"""What a run refused for a device this machine lacks can do, said in its error."""


def preflight(cfg: EvalConfig, machine: list[str] | None = None) -> None:
    """Refuse, before any model loads, a run that cannot work: an output folder that cannot
    be written or holds another run's images, a technique whose device, model, SAE,
    hookpoint, features, steps or size are wrong, a metric device this machine lacks.

    ``machine``: where given (``--check``), what this machine lacks but the file may rightly
    ask for (a CUDA device, a model the offline hub cache does not hold) is appended there
    instead of refused, and the rest of the file is still checked."""
    check_output_folder(cfg.output_dir, "output_dir")
    check_lock(Path(cfg.output_dir) / RUN_FILE, run_lock(cfg), Path(cfg.output_dir))
    technique = cfg.technique
    if _environment(machine, "technique.config", lambda: check_technique_config(technique)):
        if technique.value("device") is not None and "device" in technique.config_keys():
            # The device aside, check the rest as the run would on this machine.
            here = technique.replace(device=None)
            _environment(machine, "technique.config", lambda: check_technique_config(here))
    for i, spec in enumerate(cfg.metrics):
        device = spec.config.value("device")
        if device is not None:
            _environment(machine, f"metrics[{i}].config", lambda d=device: resolve_device(d))
    if machine is None:
        _refuse_unmet(cfg)


def _refuse_unmet(cfg: EvalConfig) -> None:
    """Before anything samples: every metric's missing optional extra, named together with
    its fix. ``--check`` lists the same as warnings."""
    missing = [
        f"metrics[{i}] ({spec.label}) needs {r.what}: {r.detail or 'missing'}"
        for i, spec in enumerate(cfg.metrics)
        for r in unmet(METRICS.get(spec.name)(spec.config).requirements())
    ]
    if missing:
        raise ConfigError("metrics", "; ".join(missing))


def _environment(machine: list[str] | None, where: str, check: Callable[[], Any]) -> bool:
    """Run ``check`` under ``where``; True when it found only that this machine lacks
    something (noted in ``machine``). Without ``machine`` that is an error with its fix."""
    try:
        within(where, check)
    except MachineMismatchError as err:
        if machine is None:
            raise MachineMismatchError(err.field, f"{_reason(err)} ({MACHINE_FIX})") from None
        machine.append(str(err))
        return True
    except ModelUnavailableError as err:
        if machine is None:
            raise
        machine.append(f"{where}: {err}")
    return False


def _reason(err: ConfigError) -> str:
    return str(err).split(": ", 1)[1] if ": " in str(err) else str(err)


def plan(cfg: EvalConfig) -> dict[str, Any]:
    """What the run will do and need, with warnings for what this machine lacks. Loads nothing;
    what would make the run fail (see :func:`preflight`) is an error here too, except what
    this machine lacks (a device, a model not in the offline cache): the file may be meant
    for another machine, so those are warnings, listed first and together."""
    machine: list[str] = []
    preflight(cfg, machine)
    tech = cfg.technique
    # A plugin technique may name no model (it loads its own); the others resolved theirs.
    needs = (
        [_model_requirement(tech.resolved_model)]
        if isinstance(tech, ResolvesModel) and tech.model
        else []
    )
    device = _device_requirement(tech.value("device"))
    if device:
        needs.append(device)
    metrics = []
    for spec in cfg.metrics:
        metric = METRICS.get(spec.name)(spec.config)
        reqs = metric.requirements()
        try:
            count: int | None = metric.planned_images(cfg.seed)
        except MetricError as err:
            count = None
            reqs.append(Requirement("its prompts", False, str(err)))
        device = _device_requirement(spec.config.value("device"))
        if device:
            reqs.append(device)
        metrics.append(
            {
                "label": spec.label,
                "name": spec.name,
                "images": count,
                "reports": metric.higher_is_better,
                "needs": [asdict(r) for r in reqs],
                "details": metric.details(),
            }
        )
    warnings = [f"this machine: {w}" for w in machine] + [
        f"{r['what']}: {r['detail'] or 'not available offline'}"
        for r in [asdict(n) for n in needs] + [r for m in metrics for r in m["needs"]]
        # A device this machine lacks is already among the machine's warnings.
        if not r["available"] and not (machine and r["what"].startswith("device "))
    ]
    return {
        "config": cfg.to_dict(),
        "technique": {"name": cfg.technique_name, "needs": [asdict(n) for n in needs]},
        "metrics": metrics,
        "total_images": sum(m["images"] or 0 for m in metrics),
        "warnings": warnings,
    }


def format_plan(p: dict[str, Any]) -> str:
    lines = [
        f"technique {p['technique']['name']}: {p['config']['technique']['config']}",
        f"seed {p['config']['seed']}, output {p['config']['output_dir']}",
    ]
    for m in p["metrics"]:
        reports = ", ".join(m["reports"])
        count = m["images"] if m["images"] is not None else "an unknown number of"
        lines.append(f"metric {m['label']}: {count} images, reports {reports}")
        budget = m.get("details", {}).get("budget")
        if budget:
            resolved = ", ".join(f"{k} {v}" for k, v in m["details"]["resolved"].items())
            lines.append(f"  {budget} budget: {resolved}")
        for r in m["needs"]:
            state = "ok" if r["available"] else "MISSING"
            detail = f" ({r['detail']})" if r["detail"] else ""
            lines.append(f"  needs {r['what']}: {state}{detail}")
    lines.append(f"{p['total_images']} images in all")
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)


# -- images -------------------------------------------------------------------------------------


NON_IMAGE_KEYS = ("device", "batch_size")
"""Technique and metric settings that change no image: where and how many at a time."""


def run_lock(cfg: EvalConfig) -> dict[str, Any]:
    """What the images of a run depend on (``run.json``)."""
    settings = {k: v for k, v in cfg.technique.to_dict().items() if k not in NON_IMAGE_KEYS}
    return {"technique": {"name": cfg.technique_name, "config": settings}, "seed": cfg.seed}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in NON_IMAGE_KEYS:
                continue
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def produced(folder: Path) -> bool:
    """Whether ``folder`` holds anything a run produced (an image, found attack prompts)."""
    if not folder.is_dir():
        return False
    patterns = ("**/images/*.png", "**/unerased/*.png", f"**/{ATTACK_PROMPTS}")
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)


def check_lock(path: Path, content: dict[str, Any], folder: Path) -> bool:
    """Whether ``path`` already records ``content``; ConfigError where it records other
    settings and ``folder`` holds what they produced (each differing key, both values)."""
    if not path.is_file():
        return False
    try:
        stored = json.loads(read_text(path, "output_dir"))
    except json.JSONDecodeError:
        stored = None
    if not isinstance(stored, dict):
        if produced(folder):
            raise ConfigError("output_dir", f"{path} is not a saeuron eval record; pick another")
        return False
    old, new = _flat(stored), _flat(content)
    diffs = [
        f"{key}: {old.get(key, '(unset)')!r} in the folder, {new.get(key, '(unset)')!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if not diffs:
        return True
    if not produced(folder):
        logger.info("%s: the run recorded there produced nothing; starting afresh", folder)
        return False
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise ConfigError(
        "output_dir",
        f"{folder} holds images of other settings ({shown}); rerun with the same settings "
        f"to resume, or use another output_dir (or remove {folder} to start over)",
    )


def _lock(path: Path, content: dict[str, Any], folder: Path) -> None:
    """Record ``content`` in ``path`` unless it is there already (refusing other settings)."""
    if not check_lock(path, content, folder):
        atomic_write_json(path, content)


def _items_lock(spec: MetricSpec, items: Sequence[Item]) -> dict[str, Any]:
    # Only the items decide the images; the config is kept to name what changed them.
    return {
        "metric": spec.name,
        "items": [asdict(i) for i in items],
        "config": spec.config.to_dict(),
    }


def _check_items(path: Path, content: dict[str, Any], folder: Path) -> None:
    if path.is_file() and produced(folder):
        try:
            stored = json.loads(read_text(path, "output_dir"))
        except json.JSONDecodeError:
            stored = {}
        if isinstance(stored, dict) and (
            stored.get("metric") == content["metric"] and stored.get("items") == content["items"]
        ):
            atomic_write_json(path, content)  # the scoring settings may have changed
            return
        if isinstance(stored, dict) and stored.get("metric") == content["metric"]:
            # Name the settings that moved the images, if any; else the images themselves.
            old, new = _flat(stored.get("config", {})), _flat(content["config"])
            diffs = [
                f"{key}: {old.get(key, '(unset)')!r} in the folder, {new.get(key, '(unset)')!r} now"
                for key in sorted(set(old) | set(new))
                if old.get(key) != new.get(key)
            ]
            count = len(stored.get("items") or [])
            raise ConfigError(
                "output_dir",
                f"{folder} holds images of other prompts or seeds ({count} images; now "
                f"{len(content['items'])}"
                + (f"; {'; '.join(diffs[:6])}" if diffs else "")
                + "); rerun with the same settings, or use another output_dir",
            )
        raise ConfigError("output_dir", f"{folder} holds another metric's images; pick another")
    atomic_write_json(path, content)


def remove_stale_temporaries(out: Path) -> None:
    """Delete what a killed run's atomic writes left behind (``.NAME.*.tmp``, never renamed
    into place). Called before any process of this run writes, so none is in flight."""
    for stale in out.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _save_png(image: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def ensure_images(
    sample: Callable[[list[str], list[int]], list[Any]],
    items: Sequence[Item],
    folder: Path,
    chunk: int,
    desc: str,
    rank: int = 0,
    world: int = 1,
) -> tuple[list[Any], int]:
    """The images of ``items``, sampling only the chunks not yet on disk; (images, sampled).

    With ``world`` processes, process ``rank`` handles chunks ``rank``, ``rank + world``, ...
    and returns only those images (the others are None).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.png" for i in range(len(items))]
    images: list[Any] = [None] * len(items)
    sampled = 0
    starts = range(rank * chunk, len(items), chunk * world)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=rank != 0):
        stop = min(start + chunk, len(items))
        if all(p.is_file() for p in paths[start:stop]):
            for i in range(start, stop):
                with Image.open(paths[i]) as im:
                    images[i] = im.convert("RGB")
            continue
        batch = list(items[start:stop])
        out = sample([it.prompt for it in batch], [it.seed for it in batch])
        if len(out) != len(batch):
            raise MetricError(f"the technique returned {len(out)} images for {len(batch)} prompts")
        for i, image in zip(range(start, stop), out):
            image = image.convert("RGB")
            _save_png(image, paths[i])
            images[i] = image
        sampled += len(batch)
    return images, sampled


# -- run ----------------------------------------------------------------------------------------


def _no_pipeline() -> Any:
    raise MetricError("the attack's prompts another process should have written are missing")


def _never(prompts: list[str], seeds: list[int]) -> list[Any]:
    raise MetricError("an image another process should have written is missing")


class _Processes:
    """This process's place among those ``accelerate launch`` started (one when not launched)."""

    def __init__(self, cfg: EvalConfig):
        # PartialState forms a CPU group (gloo) only when told the run is on the CPU.
        device = cfg.technique.value("device")
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or resolve_device(device).type == "cpu"
        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.main = self.rank == 0

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


class _LazyTechnique:
    def __init__(self, cfg: EvalConfig, procs: _Processes):
        self.cfg = cfg
        self.procs = procs
        self._tech: Technique | None = None

    def get(self) -> Technique:
        if self._tech is None:
            config = self.cfg.technique
            if self.procs.world > 1 and "device" in config.config_keys():
                # Each launched process samples on the device accelerate gave it.
                config = config.replace(device=str(self.procs.state.device))
            self._tech = build_technique(self.cfg.technique_name, config)
        return self._tech


def _run_metric(
    cfg: EvalConfig, spec: MetricSpec, tech: _LazyTechnique, out: Path, procs: _Processes
) -> dict[str, Any] | None:
    """The metric's result (on the main process; None on the others)."""
    metric: Metric = METRICS.get(spec.name)(spec.config)
    folder = out / spec.label
    try:
        items = _prepared_items(cfg, metric, tech, folder, procs)
    except MetricError as err:
        logger.warning("metric %s skipped: %s", spec.label, err)
        return {"name": spec.name, "skipped": str(err)}
    if procs.main:
        _check_items(folder / "items.json", _items_lock(spec, items), folder)
    procs.wait()
    sampled = _sample_share(cfg, spec, metric, tech, items, folder, procs)
    procs.wait()
    if not procs.main:
        return None
    images, unerased = sampled
    if procs.world > 1:
        # The main process scores every image: read the other processes' from disk.
        chunk = chunk_size(cfg)
        images, _ = ensure_images(_never, items, folder / "images", chunk, "")
        if unerased is not None:
            unerased, _ = ensure_images(_never, items, folder / "unerased", chunk, "")
    rows = _scored_rows(spec, metric, items, images, unerased)
    write_table(folder / "images.csv", rows)
    return _summary(cfg, spec, metric, rows)


def _prepared_items(
    cfg: EvalConfig, metric: Metric, tech: _LazyTechnique, folder: Path, procs: _Processes
) -> list[Any]:
    """The metric's items, after its attack where it has one."""
    metric.prepare()
    if metric.attacks:
        # The search runs once, on the main process; the others read what it found.
        if procs.main:
            metric.attack(tech.get, folder, cfg.seed)
        procs.wait()
        if not procs.main:
            metric.attack(_no_pipeline, folder, cfg.seed)
    return metric.items(cfg.seed)


def _sample_share(
    cfg: EvalConfig, spec: MetricSpec, metric: Metric, tech: _LazyTechnique, items: list[Any],
    folder: Path, procs: _Processes,
) -> tuple[list[Any], list[Any] | None]:  # fmt: skip
    """This process's share of the images (and of the unerased ones the metric needs)."""
    chunk = chunk_size(cfg)
    where = {"rank": procs.rank, "world": procs.world}
    images, sampled = ensure_images(
        lambda p, s: tech.get().generate(p, s), items, folder / "images", chunk,
        f"{spec.label}: images", **where,
    )  # fmt: skip
    unerased = None
    if metric.needs_unerased:
        unerased, more = ensure_images(
            lambda p, s: tech.get().unerased(p, s), items, folder / "unerased", chunk,
            f"{spec.label}: unerased images", **where,
        )  # fmt: skip
        sampled += more
    logger.info("%s: process %d/%d sampled %d images", spec.label, procs.rank, procs.world,
                sampled)  # fmt: skip
    return images, unerased


def _scored_rows(
    spec: MetricSpec, metric: Metric, items: list[Any], images: list[Any],
    unerased: list[Any] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per image: its item, its scores, and whether it is degenerate."""
    scores = metric.score(images, items, unerased)
    if len(scores) != len(items):
        raise MetricError(f"{spec.label}: {len(scores)} scores for {len(items)} images")
    rows = []
    for i, (item, score, image) in enumerate(zip(items, scores, images)):
        row = {"index": i, "prompt": item.prompt, "seed": item.seed, "group": item.group}
        row.update(item.meta)
        row["image"] = f"images/{i:05d}.png"
        row.update(score)
        reason = degenerate_reason(image)
        row["degenerate"] = reason or ""
        if reason:
            # Never an erasure: the row counts as the technique's failure, whatever the
            # detector said about an image with nothing in it.
            row.update(
                {k: v for k, v in metric.degenerate_scores(row).items() if k in row}
            )
        rows.append(row)
    degenerate = sum(1 for row in rows if row["degenerate"])
    if degenerate:
        logger.warning(
            "%s: %d of %d images are degenerate (black or one flat colour): counted as "
            "failures of the technique", spec.label, degenerate, len(rows),
        )  # fmt: skip
    return rows


def _summary(
    cfg: EvalConfig, spec: MetricSpec, metric: Metric, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The metric's entry in the report: its values with bootstrap intervals."""
    values = metric.summarize(rows)
    resamples = cfg.bootstrap if metric.bootstrap else 0
    intervals = bootstrap_interval(metric.summarize, rows, resamples, cfg.seed)
    result = {
        "name": spec.name,
        "values": values,
        "intervals": intervals,
        "higher_is_better": metric.higher_is_better,
        "images": len(rows),
        "degenerate": sum(1 for row in rows if row["degenerate"]),
        "table": f"{spec.label}/images.csv",
    }
    details = metric.details()
    if details:
        result["details"] = details
    return result


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Run every metric of ``cfg``; returns (and writes) the report.

    Under ``accelerate launch`` every process samples its share of the images and the main
    process scores them and writes the report (the others return an empty dict).
    """
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    preflight(cfg)
    procs = _Processes(cfg)
    # One run per folder: a second would resume from the first's half-made images. The
    # main process holds it for every process of the run (they write after it has it).
    with contextlib.ExitStack() as held:
        if procs.main:
            held.enter_context(FolderLock(out))
        return _run_locked(cfg, procs, out, start)


def _run_locked(cfg: EvalConfig, procs: _Processes, out: Path, start: float) -> dict[str, Any]:
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        _lock(out / RUN_FILE, run_lock(cfg), out)
        remove_stale_temporaries(out)
    procs.wait()
    tech = _LazyTechnique(cfg, procs)
    results: dict[str, Any] = {}
    for spec in tqdm(cfg.metrics, desc="metrics", unit="metric", disable=not procs.main):
        result = _run_metric(cfg, spec, tech, out, procs)
        if result is None:
            continue
        results[spec.label] = result
        if "values" in result:
            logger.info("%s: %s", spec.label, result["values"])
    if not procs.main:
        return {}
    report = {
        "config": cfg.to_dict(),
        "metrics": results,
        "versions": versions(),
        "git": git_hash(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / "report.json", report)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(report), encoding="utf-8")
    return report
