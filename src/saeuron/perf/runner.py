"""``saeuron bench perf``: run the registered benchmarks, print one table, keep the numbers.

Writes ``OUT/perf.json`` (every row, with its measurements) and ``OUT/perf.md`` (the
table the README's performance section is made from), each atomically.
"""

from __future__ import annotations

import importlib
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeuron.perf import BENCHMARKS, Row
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_checks import did_you_mean
from saeuron.utils.config_parts import Device, Output, Quick
from saeuron.utils.io import atomic_path, atomic_write_json, check_output_folder

logger = logging.getLogger(__name__)

# Importing a module registers its benchmark; the order is the table's.
MODULES = {
    "erase": "saeuron.perf.erase_overhead",
    "compile": "saeuron.perf.compiled",
    "features": "saeuron.perf.concept_features",
    "training": "saeuron.perf.training",
    "capture": "saeuron.perf.capture",
    "profile": "saeuron.perf.profile",
}
# The benchmarks whose numbers depend on the accelerator; the rest measure CPU-side work.
DEVICE_BENCHMARKS = ("erase", "compile", "training")


@dataclass
class PerfConfig(Config):
    only: list[str] | None = field(None, help=f"benchmarks to run: {', '.join(MODULES)}")
    smoke: Quick = field(Quick, flatten=True, help="the smoke test", describe={
        "quick": "small sizes, for a smoke test (numbers not comparable)"})
    runtime: Device = field(Device, flatten=True, help="where the benchmarks run", describe={
        "device": "device of the erase and training benchmarks; default: the CPU, and CUDA too "
        "when there is one (both reported)"})
    output: Output = field(Output(out="benchmarks/results"), flatten=True, help="where it goes",
                           describe={"out": "folder for perf.json and perf.md"})

    def __post_init__(self) -> None:
        refuse_null(self, "out")
        self.only = self.only or list(MODULES)
        for name in self.only:
            if name not in MODULES:
                raise ConfigError(
                    "only", f"unknown benchmark {name!r}{did_you_mean(name, MODULES)}; "
                    f"allowed: {', '.join(MODULES)}"
                )
        check_output_folder(self.out, "out")

    def devices(self, name: str) -> list[str]:
        if name not in DEVICE_BENCHMARKS:
            return ["cpu"]
        if self.device is not None:
            return [self.device]
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4g} {unit}".strip()


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | what | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.3f}x" if r.ratio is not None else "-"
        met = {True: "yes", False: "no", None: "-"}[r.met]
        lines.append(
            f"| {r.benchmark} | {r.what} | {_cell(r.ours, r.unit)} | {_cell(r.baseline, r.unit)} "
            f"| {ratio} | {r.target or '-'} | {met} |"
        )
    return "\n".join(lines) + "\n"


def run_perf(cfg: PerfConfig) -> dict[str, Any]:
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name in cfg.only or []:
        importlib.import_module(MODULES[name])
        for device in cfg.devices(name):
            start = time.perf_counter()
            label = name if device == "cpu" else f"{name} ({device})"
            logger.info("benchmark %s ...", label)
            new = BENCHMARKS.get(name)(cfg.quick, device)
            for row in new:
                row.benchmark = label
            rows += new
            timings[label] = time.perf_counter() - start
    report = {
        "config": cfg.to_dict(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "seconds": timings,
        "rows": [r.to_dict() for r in rows],
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "perf.json", report)
    text = table(rows)
    erase_rows = [r for r in rows if r.benchmark.startswith("erase") and r.target]
    if erase_rows:
        # The headline, in a form scripts can grep.
        text += "".join(
            f"erase overhead: {r.ratio:.3f} x ({r.benchmark}: {r.what})\n" for r in erase_rows
        )
    text += "".join(f"{name}: {s:.0f} s\n" for name, s in timings.items())
    with atomic_path(out / "perf.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    report["table"] = text
    return report
