"""SAE checkpoint layouts: how to recognise each, and how to read it as its publisher wrote it.

- ``sparsify``: the EleutherAI ``sae`` layout of the published SAeUron SAEs, one folder per
  hookpoint with ``cfg.json`` and ``sae.safetensors``; also what :meth:`Sae.save_to_disk`
  writes.
- ``saemnesia``: the same ``cfg.json`` read as SAEmnesia's loader reads it (``d_in`` or
  ``d_model``, ``n_dirs_local`` for ``num_latents``, unknown keys dropped), with a
  ``state_dict.pth`` in the sdxl-unbox key names when there is no ``sae.safetensors``.
- ``sdxl-unbox`` (Surkov et al., SDXL-Turbo): ``<hookpoint>_k10_hidden5120_..../final/`` with
  ``config.json``, ``state_dict.pth`` (``{"state_dict": ...}``) and per-latent ``mean.pt`` /
  ``std.pt``. These SAEs read the block's update (output minus input).

A reader returns a :class:`Checkpoint` (config, tensors in our names, extra buffers,
metadata); :class:`~saeuron.sae.model.Sae` builds itself from one. Third-party ``.pth``/``.pt``
files are read with ``torch.load(weights_only=True)`` only: a file holding anything but
tensors and plain containers is refused, never unpickled. Every malformed file gives a
one-line error that names it.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saeuron.sae.config import SaeConfig
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.files import SAE_CONFIG, SAE_WEIGHTS
from saeuron.utils.registry import Registry
from saeuron.utils.tensorfiles import check_safetensors

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
        # utf-8-sig: a byte-order mark, which some editors add, is allowed.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(path, f"not a readable JSON file ({_one_line(err)})") from None
    if not isinstance(data, dict):
        raise FileFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def load_tensors(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    The published sdxl-unbox files were saved from CUDA; mapping to the CPU lets them load
    on any machine (the SAE then moves to the pipeline's device).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a pickle of objects: not a pickle
            raise FileFormatError(path, f"not a readable torch file ({_one_line(err)})") from None
        raise FileFormatError(
            path,
            "holds objects other than tensors and plain containers; refusing to unpickle it "
            "(that would run code from the file)",
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FileFormatError(path, f"not a readable torch file ({_one_line(err)})") from None


def checked_header(path: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors header, once its sizes agree with the file's
    (:func:`~saeuron.utils.tensorfiles.check_safetensors`): a file claiming terabytes is
    refused before anything is allocated for it."""
    try:
        return check_safetensors(path)
    except FileFormatError as err:
        raise FileFormatError(path, f"not a readable safetensors file ({err.reason})") from None


def load_safetensors(path: Path) -> dict[str, Tensor]:
    checked_header(path)
    try:
        state = load_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise FileFormatError(path, f"not a readable safetensors file ({_one_line(err)})") from None
    check_finite(path, state)
    return state


def check_finite(path: Path, tensors: Mapping[str, Any]) -> None:
    """Refuse weights holding NaN or Inf, naming the file and tensor: one such value in a
    decoder spreads to every edited activation, and the images come out silently wrong."""
    for name, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise FileFormatError(
                    path,
                    f"tensor {name} holds {bad} NaN or Inf value{'s' if bad > 1 else ''}; "
                    "the SAE is damaged (retrain it or download it again)",
                )


def parse_eleuther_cfg(path: Path, raw: Mapping[str, Any]) -> SaeConfig:
    """``cfg.json`` as SAEmnesia's loader reads it (a superset of SAeUron's).

    ``d_in`` (else ``d_model``) is the width; ``n_dirs_local`` stands for ``num_latents``
    when that is absent; keys our config does not know (``auxk``, ``dead_steps_threshold``,
    ...) are dropped, as the publishers' ``drop_extra_fields=True`` does.
    """
    raw = dict(raw)
    d_in = raw.pop("d_in", None) or raw.pop("d_model", None)
    if d_in is None:
        raise FileFormatError(path, "has neither 'd_in' nor 'd_model' (the activation width)")
    if "n_dirs_local" in raw and "num_latents" not in raw:
        raw["num_latents"] = raw.pop("n_dirs_local")
    on = [name for name in UNSUPPORTED_FLAGS if raw.get(name)]
    if on:
        raise FileFormatError(path, f"{', '.join(on)} is set; saeuron reads plain TopK SAEs only")
    if not raw.get("num_latents") and "expansion_factor" not in raw:
        raw["expansion_factor"] = ELEUTHER_DEFAULT_EXPANSION
    known = {f.name for f in fields(SaeConfig)} - {"d_in"}
    dropped = sorted(set(raw) - known)
    if dropped:
        logger.debug("%s: keys not used by saeuron: %s", path, ", ".join(dropped))
    try:
        return SaeConfig.from_dict({"d_in": d_in, **{k: raw[k] for k in known if k in raw}})
    except ConfigError as err:
        raise FileFormatError(path, str(err)) from None


def _check_state(
    path: Path, state: Mapping[str, Any], expected: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    if not isinstance(state, Mapping):
        raise FileFormatError(path, f"expected a dict of tensors, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected) - set(optional))
    if missing or extra:
        raise FileFormatError(
            path,
            f"tensors {sorted(state)}; expected {list(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else ""),
        )
    for key in expected:
        if not isinstance(state[key], Tensor):
            raise FileFormatError(path, f"{key} is a {type(state[key]).__name__}, not a tensor")


def _check_shapes(path: Path, state: Mapping[str, Tensor], want: Mapping[str, tuple]) -> None:
    for name, shape in want.items():
        if tuple(state[name].shape) != tuple(shape):
            raise FileFormatError(
                path,
                f"{name} has shape {tuple(state[name].shape)}, the config implies {tuple(shape)}",
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
        raise FileFormatError(path, f"expected a dict of tensors, got {type(state).__name__}")
    check_finite(path, state)
    return dict(state)


@dataclass
class Checkpoint:
    """What a reader found: the architecture and the tensors in our names."""

    cfg: SaeConfig
    state: dict[str, Tensor]
    """``encoder.weight [n, d]``, ``encoder.bias [n]``, ``W_dec [n, d]``, ``b_dec [d]``."""
    buffers: dict[str, Tensor] = dc_field(default_factory=dict)
    """Extra per-latent tensors the SAE keeps (sdxl-unbox's ``latent_mean``/``latent_std``)."""
    meta: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return self.state["W_dec"].dtype


def _build(cfg: SaeConfig, state: Mapping[str, Tensor]) -> Checkpoint:
    dtype = state["W_dec"].dtype
    return Checkpoint(cfg, {k: state[k].to(dtype) for k in SPARSIFY_KEYS})


def read_eleuther(folder: Path, allow_pth: bool = True) -> Checkpoint:
    """``cfg.json`` + ``sae.safetensors`` (else, if allowed, ``state_dict.pth``)."""
    cfg = parse_eleuther_cfg(folder / SAE_CONFIG, read_json_object(folder / SAE_CONFIG))
    if (folder / SAE_WEIGHTS).is_file():
        path = folder / SAE_WEIGHTS
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
        wanted = f"{SAE_WEIGHTS} or {PTH_FILE}" if allow_pth else SAE_WEIGHTS
        raise FileFormatError(folder, f"{SAE_CONFIG} has no weights beside it (expected {wanted})")
    _check_shapes(path, state, _sparsify_shapes(cfg))
    return _build(cfg, state)


def read_saemnesia(folder: Path) -> Checkpoint:
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


def read_sdxl_unbox(folder: Path, k: int | None = None) -> Checkpoint:
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
        raise FileFormatError(folder, f"no sdxl-unbox weights ({PTH_FILE} or {UNBOX_SAFETENSORS})")
    state = _unbox_state(path)
    _check_state(path, state, UNBOX_KEYS, optional=UNBOX_BUFFERS)
    if state["encoder.weight"].ndim != 2:
        raise FileFormatError(
            path, f"encoder.weight must be 2-D, got {tuple(state['encoder.weight'].shape)}"
        )
    n, d = state["encoder.weight"].shape
    for key, want in (("n_dirs_local", n), ("d_model", d)):
        if key in config and config[key] != want:
            raise FileFormatError(
                folder / UNBOX_CONFIG, f"{key} is {config[key]!r} but {path.name} holds {want}"
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
        raise FileFormatError(folder, f"k is {k!r}; must be an integer from 1 to {n}")
    cfg = SaeConfig(d_in=int(d), num_latents=int(n), expansion_factor=max(n // d, 1), k=k)
    checkpoint = _build(
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
                raise FileFormatError(
                    folder / name, f"expected a tensor of shape ({n},), got {shape}"
                )
            check_finite(folder / name, {buffer: value})
            checkpoint.buffers[buffer] = value.to(checkpoint.dtype)
    checkpoint.meta["activation_site"] = "update"
    if run is not None:
        checkpoint.meta["hookpoint"] = run.group("hookpoint")
    checkpoint.meta["sdxl_unbox"] = {
        key: config[key] for key in ("auxk", "dead_steps_threshold") if key in config
    }
    return checkpoint


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


def read_sparsify(folder: Path) -> Checkpoint:
    """The published SAeUron layout (EleutherAI sae/sparsify): cfg.json + sae.safetensors."""
    return read_eleuther(folder, allow_pth=False)


@dataclass(frozen=True)
class SaeFormat:
    """A checkpoint layout: how to recognise a folder of it, and how to read one."""

    detect: Callable[[Path], bool]
    read: Callable[..., Checkpoint]
    describe: str


SAE_FORMATS: Registry[SaeFormat] = Registry("SAE format")
"""Checkpoint layouts by name, tried in registration order by :func:`detect_format`."""

SAE_FORMATS.register("sparsify")(
    SaeFormat(
        lambda f: (f / SAE_CONFIG).is_file() and (f / SAE_WEIGHTS).is_file(),
        read_sparsify,
        f"{SAE_CONFIG} + {SAE_WEIGHTS} (SAeUron layout)",
    )
)
SAE_FORMATS.register("saemnesia")(
    SaeFormat(
        lambda f: (f / SAE_CONFIG).is_file() and (f / PTH_FILE).is_file(),
        read_saemnesia,
        f"{SAE_CONFIG} + {PTH_FILE} (SAEmnesia)",
    )
)
SAE_FORMATS.register("sdxl-unbox")(
    SaeFormat(
        lambda f: any((f / name).is_file() for name in (PTH_FILE, UNBOX_SAFETENSORS)),
        read_sdxl_unbox,
        f"{PTH_FILE} (sdxl-unbox)",
    )
)


def detect_format(folder: Path) -> str:
    for name, fmt in SAE_FORMATS.items():
        if fmt.detect(folder):
            return name
    refuse_pickles(folder, recursive=False)
    expected = "; ".join(fmt.describe for _, fmt in SAE_FORMATS.items())
    raise FileFormatError(folder, f"holds no SAE checkpoint; expected {expected}")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Files that are (or may be) Python pickles: loading one can run code it holds."""


def refuse_pickles(folder: Path, recursive: bool = True) -> None:
    """Refuse a folder (a hub repo, a download) whose only weights are pickles in no layout
    saeuron reads: a clear reason instead of "no checkpoint", and never an unpickling.

    The ``state_dict.pth`` of the sdxl-unbox and SAEmnesia layouts is recognised before
    this is reached, and read with ``torch.load(weights_only=True)``, which builds tensors
    and plain containers only."""
    if not folder.is_dir():
        return
    files = [p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = sorted(p.relative_to(folder).as_posix() for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        more = f", ... ({len(pickles)} in all)" if len(pickles) > 5 else ""
        shown = ", ".join(pickles[:5]) + more
        raise FileFormatError(
            folder,
            f"holds only pickle files ({shown}) and no safetensors; saeuron does not unpickle "
            "them (that can run code from the file): convert the weights to safetensors "
            f"({SAE_CONFIG} + {SAE_WEIGHTS})",
        )


def looks_like_checkpoint(folder: Path) -> bool:
    try:
        detect_format(folder)
        return True
    except (ValueError, OSError):
        return False


def read_checkpoint(folder: Path, format: str | None = None, **kwargs: Any) -> Checkpoint:  # noqa: A002
    """The checkpoint in ``folder``, in the named layout or the one detected."""
    return SAE_FORMATS.get(format or detect_format(folder)).read(folder, **kwargs)


def locate(root: Path, hookpoint: str) -> Path | None:
    """The checkpoint folder of ``hookpoint`` under ``root``: ``root/<hookpoint>/`` (SAeUron),
    an sdxl-unbox run folder, or None."""
    if (root / hookpoint).is_dir():
        return root / hookpoint
    return find_hookpoint_folder(root, hookpoint)


def hookpoints_in(root: Path) -> list[str]:
    """The hookpoints whose checkpoints ``root`` holds (for error messages)."""
    if not root.is_dir():
        return []
    found = {p.name for p in root.iterdir() if p.is_dir() and looks_like_checkpoint(p)}
    return sorted(found | set(unbox_hookpoints(root)))


ROOT_FILES = ("cfg.json", "sae.safetensors", "state_dict.pth", "config.json", "mean.pt", "std.pt")
"""The checkpoint files of a repo that holds one SAE at its root (SAEmnesia)."""


def hub_patterns(hookpoint: str) -> list[str]:
    """Files of one hookpoint in a hub repo: its folder (SAeUron) or run folders (sdxl-unbox)."""
    return [f"{hookpoint}/*", f"{hookpoint}_k*"]
