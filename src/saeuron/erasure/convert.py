"""``saeuron convert``: the published repositories' pickled statistics, into our formats.

SAeUron and SAEmnesia ship per-class SAE statistics as ``cls_latents_dict_<hookpoint>.pkl``
(a pickled dict: class name -> tensor ``[prompts, steps, latents]`` of token-mean SAE codes)
and per-class parameters as ``class_params.pth`` (a torch-saved dict). Unpickling runs code
from the file, so these are read only when the user says they trust it (``--trust-pickle``);
the output is our safetensors + JSON :class:`~saeuron.erasure.concepts.stats.ConceptStats`
(one per class)
and a plain JSON of parameters, which never need that trust again.

    saeuron convert stats cls_latents_dict_HOOKPOINT.pkl --out stats/ --trust-pickle
    saeuron convert params class_params.pth --out params.json --trust-pickle
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.models.tiny import sd_ddim_scheduler
from saeuron.utils.config import ConfigError
from saeuron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

REFUSAL = (
    "{path} is a pickle: loading it runs whatever code it holds. Convert it only if it comes "
    "from a source you trust, by adding --trust-pickle (trust_pickle=True); nothing was read"
)


def _load_trusted(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise ConfigError("input", f"file {str(path)!r} does not exist")
    if not trust_pickle:
        raise ConfigError("trust_pickle", REFUSAL.format(path=path))
    logger.warning("unpickling %s because --trust-pickle was given", path)
    if path.suffix.lower() in (".pth", ".pt"):
        return torch.load(path, map_location="cpu", weights_only=False)
    with path.open("rb") as fh:
        return pickle.load(fh)  # noqa: S301 - the user vouched for this file


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "concept"


def schedule(num_steps: int) -> torch.Tensor:
    """Timesteps of SD's DDIM schedule with ``num_steps`` steps (what the statistics used)."""
    scheduler = sd_ddim_scheduler()
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.clone()


def convert_stats(
    path: str | Path,
    out: str | Path,
    trust_pickle: bool = False,
    hookpoint: str | None = None,
    source: str | None = None,
) -> list[Path]:
    """One :class:`ConceptStats` per class of a ``cls_latents_dict`` pickle; their paths."""
    path = Path(path)
    data = _load_trusted(path, trust_pickle)
    if not isinstance(data, dict) or not data:
        raise ConfigError("input", f"{path}: expected a dict of class -> tensor, got {type(data)}")
    written = []
    for name, value in data.items():
        tensor = torch.as_tensor(value).float()
        if tensor.ndim != 3:
            raise ConfigError(
                "input",
                f"{path}: class {name!r} holds a tensor of shape {tuple(tensor.shape)}; "
                "expected [prompts, steps, latents]",
            )
        n_prompts, steps, _ = tensor.shape
        stats = ConceptStats(
            concept=str(name),
            mean=tensor.mean(0),
            # The pickles keep token means only: the share of active tokens is unknown, so
            # the activity filter cannot be used on converted statistics.
            active_frac=torch.full_like(tensor[0], math.nan),
            n_prompts=int(n_prompts),
            timesteps=schedule(int(steps)),
            meta={
                "converted_from": path.name,
                "source": source or "SAeUron/SAEmnesia cls_latents_dict",
                "hookpoint": hookpoint,
                "num_inference_steps": int(steps),
                "steps": list(range(int(steps))),
                "active_frac": "unknown",
            },
        )
        written.append(stats.save(Path(out) / _file_name(str(name))))
    logger.info("converted %d classes from %s into %s", len(written), path, out)
    return written


def _plain(value: Any, where: str) -> Any:
    """Numbers, strings, lists and dicts only: what JSON holds and a reader can trust."""
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.ndim else value.item()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError("input", f"{where}: a {type(value).__name__} has no JSON form")


def convert_params(path: str | Path, out: str | Path, trust_pickle: bool = False) -> Path:
    """A ``class_params`` file (class -> parameters) as plain JSON."""
    path = Path(path)
    data = _load_trusted(path, trust_pickle)
    if not isinstance(data, dict):
        raise ConfigError("input", f"{path}: expected a dict of class -> parameters")
    return atomic_write_json(out, _plain(data, path.name))
