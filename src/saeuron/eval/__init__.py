"""``saeuron eval``: measure an erasure against the field's metrics from one config."""

from __future__ import annotations

from saeuron.eval.config import EvalConfig, load_eval_config, parse_eval_config
from saeuron.eval.runner import plan, run_eval

__all__ = ["EvalConfig", "load_eval_config", "parse_eval_config", "plan", "run_eval"]
