"""The config of ``saeuron eval``: eval-unlearn's schema, validated whole before anything loads.

    {
      "output_dir": "results/saeuron_asr",
      "seed": 0,
      "technique": {"name": "saeuron", "config": {"erase_concept": "nudity"}},
      "metric": {"name": "unlearncanvas", "config": {}}       # or "metrics": [{...}, ...]
    }

A metric's concept (``concept``, ``target_concept``, ...) defaults to the technique's
``erase_concept``. Unknown keys anywhere are errors with a did-you-mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saeuron.eval.detectors import default_detector
from saeuron.eval.metrics import METRICS
from saeuron.eval.techniques import technique_config, technique_entry
from saeuron.models.resolve import ResolvesModel
from saeuron.utils.config import Config, ConfigError, check_range
from saeuron.utils.config_checks import reject_unknown
from saeuron.utils.plugins import is_plugin, refuse_untrusted
from saeuron.utils.text import read_text

TOP_KEYS = ("output_dir", "technique", "metric", "metrics", "seed", "bootstrap")
SPEC_KEYS = ("name", "config")


@dataclass
class MetricSpec:
    name: str
    config: Config
    label: str
    """Unique within the run: the metric's folder (``fid``, or ``fid_2`` for a second one)."""


@dataclass
class EvalConfig:
    output_dir: str
    technique_name: str
    technique: Config
    metrics: list[MetricSpec]
    seed: int = 0
    bootstrap: int = 1000
    """Bootstrap resamples of each value's 95 % interval (0: no intervals)."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, defaults filled in: what the report records."""
        return {
            "output_dir": self.output_dir,
            "seed": self.seed,
            "bootstrap": self.bootstrap,
            "technique": {"name": self.technique_name, "config": self.technique.to_dict()},
            "metrics": [
                {"name": m.name, "label": m.label, "config": m.config.to_dict()}
                for m in self.metrics
            ],
        }


def _has_field(cls: type[Config], name: str) -> bool:
    return name in cls.config_keys()


def within(where: str, make: Callable[[], Any]) -> Any:
    """Run ``make``; a ConfigError it raises names its field under ``where``."""
    try:
        return make()
    except ConfigError as err:
        if err.field.startswith(where):
            raise
        # The same class: a MachineMismatchError stays one (--check warns about those).
        raise type(err)(f"{where}.{err.field}", str(err).split(": ", 1)[1]) from None


def _spec(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected an object {{name, config}}, got {value!r}")
    reject_unknown(where, value.keys(), SPEC_KEYS)
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name", "must be a non-empty string")
    config = value.get("config", {}) or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}.config", f"expected an object, got {config!r}")
    return name, dict(config)


def _technique_settings(raw: list[Any], technique: type[Config]) -> dict[str, tuple[Any, str]]:
    """What the metrics require of the technique config: key -> (value, metric name)."""
    required: dict[str, tuple[Any, str]] = {}
    for entry in raw:
        if not isinstance(entry, Mapping) or entry.get("name") not in METRICS:
            continue  # reported with its position below
        config = entry.get("config") or {}
        if not isinstance(config, Mapping):
            continue
        for key, value in METRICS.get(entry["name"]).technique_settings(config).items():
            if _has_field(technique, key):
                required[key] = (value, entry["name"])
    return required


def _fill_detector(metric: type[Config], config: dict[str, Any], technique: Config) -> None:
    """A metric's default detector, which depends on the technique's model (its bundle's
    classifier), chosen here from the model the technique config resolved: the metric's
    own config would otherwise look the model up by name a second time."""
    concept = config.get("concept") or config.get("concept_name")
    if (
        _has_field(metric, "detector")
        and not config.get("detector")
        and isinstance(concept, str)
        and concept.strip()
        and isinstance(technique, ResolvesModel)
    ):
        config["detector"] = default_detector(concept, technique.resolved_model.bundle)


def parse_eval_config(
    data: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    technique: str | None = None,
    trust_code: bool = False,
) -> EvalConfig:
    """Validate a whole config (as read from JSON/YAML). ``overrides`` replace technique keys;
    ``device`` replaces the device of the technique and of every metric that has one.

    ``technique`` replaces the config's technique name (a registered name or a
    ``module:Class`` the caller names, so trusted); a ``module:Class`` read from the config
    itself is refused unless ``trust_code``."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"expected an object, got {type(data).__name__}")
    reject_unknown("", data.keys(), TOP_KEYS)
    output_dir = data.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise ConfigError("output_dir", "must be a non-empty string (the run's folder)")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"got {seed!r}; must be an integer >= 0")
    bootstrap = data.get("bootstrap", 1000)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int):
        raise ConfigError("bootstrap", f"got {bootstrap!r}; must be an integer >= 0")
    check_range("bootstrap", bootstrap, ge=0)

    if "technique" not in data:
        raise ConfigError("technique", 'missing: {"name": "saeuron", "config": {...}}')
    tech_name, tech_dict = _spec(data["technique"], "technique")
    tech_dict.update(overrides or {})

    if technique is not None:
        tech_name = technique  # named on the command line or in Python: trusted
    elif is_plugin(tech_name) and not trust_code:
        refuse_untrusted(tech_name, "technique.name", "the config")
    entry = technique_entry(tech_name)  # an unknown name is an error of 'technique' itself
    if device is not None and _has_field(entry.config, "device"):
        tech_dict["device"] = device

    if ("metric" in data) == ("metrics" in data):
        raise ConfigError(
            "metrics", "give exactly one of 'metric' (an object) and 'metrics' (a list)"
        )
    raw = [data["metric"]] if "metric" in data else data["metrics"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("metrics", "must be a non-empty list of {name, config}")
    required = _technique_settings(raw, entry.config)
    for key, (value, _) in required.items():
        tech_dict.setdefault(key, value)
    tech_cfg = within("technique.config", lambda: technique_config(tech_name, tech_dict))
    for key, (value, metric) in required.items():
        if getattr(tech_cfg, key) != value:
            raise ConfigError(
                f"technique.config.{key}",
                f"got {getattr(tech_cfg, key)!r}; the {metric} metric's protocol needs {value!r}",
            )
    concept = getattr(tech_cfg, "erase_concept", None)
    specs: list[MetricSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = "metric" if "metric" in data else f"metrics[{i}]"
        name, config = _spec(entry, where)
        cls = METRICS.get(name)
        if device is not None and _has_field(cls.Config, "device"):
            config["device"] = device
        if cls.concept_field and cls.concept_field not in config and concept is not None:
            config[cls.concept_field] = concept
        if cls.model_field and cls.model_field not in config:
            config[cls.model_field] = getattr(tech_cfg, "model", None)
            _fill_detector(cls.Config, config, tech_cfg)
        metric_cfg = within(
            f"{where}.config",
            lambda cls=cls, config=config, at=f"{where}.config": cls.Config.from_dict(config, at),
        )
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}_{seen[name]}"
        specs.append(MetricSpec(name, metric_cfg, label))
    return EvalConfig(output_dir, tech_name, tech_cfg, specs, seed, bootstrap)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file's content."""
    path = Path(path)
    text = read_text(path, "config")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError("config", f"{path} is not valid YAML: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("config", f"{path} is not valid JSON: {err}") from None


def load_eval_config(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    technique: str | None = None,
    trust_code: bool = False,
) -> EvalConfig:
    return parse_eval_config(read_config_file(path), overrides, device, technique, trust_code)
