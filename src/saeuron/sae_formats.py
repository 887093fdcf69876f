"""Readers for the published SAE checkpoints, each as its publisher's code writes it.

- ``sparsify`` (in :mod:`saeuron.sae`) and ``saemnesia``: EleutherAI ``sae`` layout, one
  folder per hookpoint with ``cfg.json`` and ``sae.safetensors`` (SAeUron). The SAEmnesia
  loader reads the same ``cfg.json`` more leniently (``d_in`` or ``d_model``,
  ``n_dirs_local`` for ``num_latents``, unknown keys dropped) and falls back to a
  ``state_dict.pth`` in the sdxl-unbox key names.
- ``sdxl-unbox`` (Surkov et al., SDXL-Turbo): ``<hookpoint>_k10_hidden5120_..../final/`` with
  ``config.json``, ``state_dict.pth`` (``{"state_dict": ...}``) and per-latent ``mean.pt`` /
  ``std.pt``. These SAEs read the block's update (output minus input).

Third-party ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` only: a file
holding anything but tensors and plain containers is refused, never unpickled. Every
malformed file gives a one-line ``ValueError`` that names it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from .config import ConfigError
from .sae import CFG_FILE, SAE_FORMATS, WEIGHTS_FILE, Sae, SaeConfig

logger = logging.getLogger(__name__)

PTH_FILE = "state_dict.pth"
"""SAEmnesia's fallback weights and sdxl-unbox's weights (a torch pickle of tensors)."""
UNBOX_CONFIG = "config.json"
UNBOX_SAFETENSORS = "state_dict.safetensors"
"""The sdxl-unbox weights converted to safetensors (our own variant; same key names)."""
LATENT_STATS = {"latent_mean": "mean.pt", "latent_std": "std.pt"}
"""sdxl-unbox ships each latent's mean and std activation; its demo scales an added feature
by ``strength * mean[f]``. Kept on the SAE as buffers of the same names."""

ELEUTHER_DEFAULT_EXPANSION = 32
"""EleutherAI sae's default ``expansion_factor``: what a ``cfg.json`` without
``num_latents`` or ``expansion_factor`` means to the publishers' loaders."""
UNSUPPORTED_FLAGS = ("skip_connection", "transcode", "signed")
"""Later EleutherAI options with extra weights or a different forward: refused, not dropped."""
UNBOX_KEYS = ("encoder.weight", "decoder.weight", "pre_bias", "latent_bias")
UNBOX_BUFFERS = ("stats_last_nonzero",)
"""Training-only state saved beside the weights (steps since each latent last fired)."""
SPARSIFY_KEYS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
# sdxl-unbox names -> ours; decoder.weight is [d, n] there, W_dec [n, d] here.
UNBOX_TO_SPARSIFY = {"pre_bias": "b_dec", "latent_bias": "encoder.bias"}
UNBOX_FOLDER = re.compile(r"^(?P<hookpoint>.+?)_k(?P<k>\d+)_hidden(?P<hidden>\d+)(?:_|$)")
"""sdxl-unbox run folders: ``<hookpoint>_k<k>_hidden<n>_auxk<a>_bs<b>_lr<lr>``."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a one-line error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({_one_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    The published sdxl-unbox files were saved from CUDA; mapping to the CPU lets them load
    on any machine (the SAE then moves to the pipeline's device).
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a pickle of objects: not a pickle
            raise ValueError(f"{path}: not a readable torch file ({_one_line(err)})") from None
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers; refusing to "
            "unpickle it (that would run code from the file)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable torch file ({_one_line(err)})") from None


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({_one_line(err)})") from None


def parse_eleuther_cfg(path: Path, raw: Mapping[str, Any]) -> SaeConfig:
    """``cfg.json`` as SAEmnesia's loader reads it (a superset of SAeUron's).

    ``d_in`` (else ``d_model``) is the width; ``n_dirs_local`` stands for ``num_latents``
    when that is absent; keys our config does not know (``auxk``, ``dead_steps_threshold``,
    ...) are dropped, as the publishers' ``drop_extra_fields=True`` does.
    """
    raw = dict(raw)
    d_in = raw.pop("d_in", None) or raw.pop("d_model", None)
    if d_in is None:
        raise ValueError(f"{path}: has neither 'd_in' nor 'd_model' (the activation width)")
    if "n_dirs_local" in raw and "num_latents" not in raw:
        raw["num_latents"] = raw.pop("n_dirs_local")
    on = [name for name in UNSUPPORTED_FLAGS if raw.get(name)]
    if on:
        raise ValueError(f"{path}: {', '.join(on)} is set; saeuron reads plain TopK SAEs only")
    if not raw.get("num_latents") and "expansion_factor" not in raw:
        raw["expansion_factor"] = ELEUTHER_DEFAULT_EXPANSION
    known = {f.name for f in fields(SaeConfig)} - {"d_in"}
    dropped = sorted(set(raw) - known)
    if dropped:
        logger.debug("%s: keys not used by saeuron: %s", path, ", ".join(dropped))
    try:
        return SaeConfig.from_dict({"d_in": d_in, **{k: raw[k] for k in known if k in raw}})
    except ConfigError as err:
        raise ValueError(f"{path}: {err}") from None


def _check_state(
    path: Path, state: Mapping[str, Any], expected: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected) - set(optional))
    if missing or extra:
        raise ValueError(
            f"{path}: tensors {sorted(state)}; expected {list(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for key in expected:
        if not isinstance(state[key], Tensor):
            raise ValueError(f"{path}: {key} is a {type(state[key]).__name__}, not a tensor")


def _check_shapes(path: Path, state: Mapping[str, Tensor], want: Mapping[str, tuple]) -> None:
    for name, shape in want.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, the config implies "
                f"{tuple(shape)}"
            )


def _sparsify_shapes(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    n, d = cfg.num_latents, cfg.d_in
    return {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,)}


def _unbox_state(path: Path) -> dict[str, Tensor]:
    """The tensors of an sdxl-unbox weights file: nested ``{"state_dict": ...}`` or flat."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    raw = load_tensors(path)
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return dict(state)


def _build(cfg: SaeConfig, state: Mapping[str, Tensor]) -> Sae:
    sae = Sae(cfg, dtype=state["W_dec"].dtype)
    sae.load_state_dict({k: state[k].to(state["W_dec"].dtype) for k in SPARSIFY_KEYS})
    return sae


def read_eleuther(folder: Path, allow_pth: bool = True) -> Sae:
    """``cfg.json`` + ``sae.safetensors`` (else, if allowed, ``state_dict.pth``)."""
    cfg = parse_eleuther_cfg(folder / CFG_FILE, read_json_object(folder / CFG_FILE))
    if (folder / WEIGHTS_FILE).is_file():
        path = folder / WEIGHTS_FILE
        state = load_safetensors(path)
        _check_state(path, state, SPARSIFY_KEYS)
    elif allow_pth and (folder / PTH_FILE).is_file():
        path = folder / PTH_FILE
        unbox = _unbox_state(path)
        # SAEmnesia's remapping: sdxl-unbox names renamed, its training buffer skipped,
        # anything already in our names kept as it is.
        state = {}
        for key, value in unbox.items():
            if key == "decoder.weight" and isinstance(value, Tensor):
                state["W_dec"] = value.T.contiguous()
            elif key not in UNBOX_BUFFERS:
                state[UNBOX_TO_SPARSIFY.get(key, key)] = value
        _check_state(path, state, SPARSIFY_KEYS)
    else:
        wanted = f"{WEIGHTS_FILE} or {PTH_FILE}" if allow_pth else WEIGHTS_FILE
        raise ValueError(f"{folder}: {CFG_FILE} has no weights beside it (expected {wanted})")
    _check_shapes(path, state, _sparsify_shapes(cfg))
    return _build(cfg, state)


@SAE_FORMATS.register("saemnesia")
def read_saemnesia(folder: Path) -> Sae:
    """SAEmnesia (``leno3003/SAEmnesia``): its download script saves the repo's files straight
    into ``<dir>/<hookpoint>/``; ``cfg.json`` with ``sae.safetensors`` or ``state_dict.pth``."""
    return read_eleuther(folder, allow_pth=True)


def unbox_run(folder: Path) -> re.Match[str] | None:
    """The sdxl-unbox run-name match of ``folder`` (or of its parent, for ``.../final``)."""
    for name in (folder.name, folder.parent.name):
        match = UNBOX_FOLDER.match(name)
        if match:
            return match
    return None


@SAE_FORMATS.register("sdxl-unbox")
def read_sdxl_unbox(folder: Path, k: int | None = None) -> Sae:
    """sdxl-unbox: ``pre_bias``, ``latent_bias``, ``encoder.weight`` [n, d], ``decoder.weight``
    [d, n] (``stats_last_nonzero`` skipped), with ``config.json`` beside it.

    Their encode is ``relu(topk(encoder(x - pre_bias) + latent_bias))`` and their decode
    ``decoder(z) + pre_bias``: the same TopK SAE with ``b_dec = pre_bias``, ``b_enc =
    latent_bias`` and ``W_dec = decoder.weight.T``. ``k`` comes from the argument, then
    ``config.json``, then the run folder's ``_k<N>_``. ``mean.pt`` / ``std.pt``, when present,
    become the buffers ``latent_mean`` / ``latent_std``.
    """
    config: dict[str, Any] = {}
    if (folder / UNBOX_CONFIG).is_file():
        config = read_json_object(folder / UNBOX_CONFIG)
    path = folder / (UNBOX_SAFETENSORS if (folder / UNBOX_SAFETENSORS).is_file() else PTH_FILE)
    if not path.is_file():
        raise ValueError(f"{folder}: no sdxl-unbox weights ({PTH_FILE} or {UNBOX_SAFETENSORS})")
    state = _unbox_state(path)
    _check_state(path, state, UNBOX_KEYS, optional=UNBOX_BUFFERS)
    if state["encoder.weight"].ndim != 2:
        raise ValueError(
            f"{path}: encoder.weight must be 2-D, got {tuple(state['encoder.weight'].shape)}"
        )
    n, d = state["encoder.weight"].shape
    for key, want in (("n_dirs_local", n), ("d_model", d)):
        if key in config and config[key] != want:
            raise ValueError(
                f"{folder / UNBOX_CONFIG}: {key} is {config[key]!r} but {path.name} holds {want}"
            )
    _check_shapes(path, state, {"decoder.weight": (d, n), "pre_bias": (d,), "latent_bias": (n,)})
    run = unbox_run(folder)
    if k is None:
        k = config.get("k")
    if k is None and run is not None:
        k = int(run.group("k"))
    if k is None:
        raise ConfigError("k", f"cannot tell k for sdxl-unbox checkpoint {folder}; pass k=...")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"{folder}: k is {k!r}; must be an integer from 1 to {n}")
    cfg = SaeConfig(d_in=int(d), num_latents=int(n), expansion_factor=max(n // d, 1), k=k)
    sae = _build(
        cfg,
        {
            "encoder.weight": state["encoder.weight"],
            "encoder.bias": state["latent_bias"],
            "W_dec": state["decoder.weight"].T.contiguous(),
            "b_dec": state["pre_bias"],
        },
    )
    for buffer, name in LATENT_STATS.items():
        if (folder / name).is_file():
            value = load_tensors(folder / name)
            if not isinstance(value, Tensor) or tuple(value.shape) != (n,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{folder / name}: expected a tensor of shape ({n},), got {shape}")
            sae.register_buffer(buffer, value.to(sae.dtype), persistent=False)
    sae.meta["activation_site"] = "update"
    if run is not None:
        sae.meta["hookpoint"] = run.group("hookpoint")
    sae.meta["sdxl_unbox"] = {
        key: config[key] for key in ("auxk", "dead_steps_threshold") if key in config
    }
    return sae


def find_hookpoint_folder(root: Path, hookpoint: str) -> Path | None:
    """The checkpoint of ``hookpoint`` in a folder of sdxl-unbox runs, if there is one.

    sdxl-unbox keeps ``<hookpoint>_k10_hidden5120_.../final/``; more than one run for the
    hookpoint is ambiguous and named in the error.
    """
    if not root.is_dir():
        return None
    runs = sorted(
        p for p in root.iterdir()
        if p.is_dir() and (m := UNBOX_FOLDER.match(p.name)) and m.group("hookpoint") == hookpoint
    )  # fmt: skip
    if not runs:
        return None
    if len(runs) > 1:
        raise FileNotFoundError(
            f"{root} holds several sdxl-unbox runs for {hookpoint}: "
            f"{', '.join(p.name for p in runs)}; pass the run's folder itself"
        )
    return runs[0] / "final" if (runs[0] / "final").is_dir() else runs[0]


def unbox_hookpoints(root: Path) -> list[str]:
    """Hookpoints of the sdxl-unbox runs in ``root`` (for error messages)."""
    if not root.is_dir():
        return []
    return sorted(
        m.group("hookpoint")
        for p in root.iterdir()
        if p.is_dir() and (m := UNBOX_FOLDER.match(p.name))
    )


def detect_published(folder: Path) -> str | None:
    """``saemnesia`` or ``sdxl-unbox`` when ``folder`` looks like one, else None."""
    if (folder / CFG_FILE).is_file() and (folder / PTH_FILE).is_file():
        return "saemnesia"
    if any((folder / f).is_file() for f in (PTH_FILE, UNBOX_SAFETENSORS)):
        return "sdxl-unbox"
    return None
