"""``saeuron eval -c cfg.json [--check] | --list``: measure an erasure."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saeuron.utils.errors import ConfigError


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Run a technique against metrics from one config: output_dir, technique "
        "{name, config} and metric or metrics [{name, config}] (eval-unlearn's schema).",
    )
    parser.add_argument("-c", "--config", help="the run's JSON or YAML config")
    parser.add_argument(
        "--check", action="store_true", help="validate and print the plan; load no model"
    )
    parser.add_argument("--list", action="store_true", help="list techniques and metrics")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument(
        "--device", help="run the technique and every metric on this device (e.g. cpu)"
    )
    parser.add_argument(
        "--technique",
        metavar="NAME",
        help="the technique instead of the config's: a registered name or your own "
        "module:Class (built as Class(**config); it has pipe, generate(prompts, seeds), "
        "unerased(prompts, seeds) and erase())",
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="let the config file name a module:Class technique (a file never runs code "
        "otherwise)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a technique config key, e.g. --set model=minicanvas (repeatable)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # The metrics and techniques import torch and the models: only once the command runs, so
    # that `saeuron eval --help` answers at once.
    from saeuron.eval.config import load_eval_config  # noqa: PLC0415
    from saeuron.eval.metrics import METRICS  # noqa: PLC0415
    from saeuron.eval.runner import format_plan, plan, run_eval  # noqa: PLC0415
    from saeuron.eval.techniques import TECHNIQUES  # noqa: PLC0415

    if args.list:
        print("techniques:")
        for name in TECHNIQUES:
            print(f"  {name:18s} {TECHNIQUES.get(name).help}")
        print("metrics:")
        for name in METRICS:
            cls = METRICS.get(name)
            print(f"  {name:18s} {cls.help} (reports {', '.join(cls.higher_is_better)})")
        return 0
    if not args.config:
        raise ConfigError("config", "give the run's config: saeuron eval -c cfg.json")
    overrides: dict[str, Any] = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError("set", f"got {pair!r}; expected KEY=VALUE (a technique config key)")
        overrides[key] = value
    cfg = load_eval_config(args.config, overrides, args.device, args.technique, args.trust_code)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.check:
        print(format_plan(plan(cfg)))
        return 0
    report = run_eval(cfg)
    if not report:  # not the main process of an accelerate launch: it reports nothing
        return 0
    for label, result in report["metrics"].items():
        if "skipped" in result:
            print(f"{label}: skipped ({result['skipped']})")
        else:
            print(f"{label}: {json.dumps(result['values'])}")
    print(f"report: {cfg.output_dir}/report.json, {cfg.output_dir}/summary.md")
    return 0
