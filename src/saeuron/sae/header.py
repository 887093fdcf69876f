"""What an SAE checkpoint holds, read from its config and its tensors' headers only.

Commands check the SAE they are given before any model loads: that the folder exists and is
one of the layouts :mod:`saeuron.sae.formats` reads, that its config and its tensors agree,
and how wide it is (so the hookpoint and features can be checked against it). No weight is
read: ``sae.safetensors`` is opened for its header (names, shapes, and whether the file
covers them, so a truncated file is found), and a ``.pth`` file is memory-mapped, which
reads its index but none of its storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saeuron.sae.formats import (
    LATENT_STATS,
    PTH_FILE,
    SPARSIFY_KEYS,
    UNBOX_BUFFERS,
    UNBOX_CONFIG,
    UNBOX_KEYS,
    UNBOX_SAFETENSORS,
    _one_line,
    checked_header,
    detect_format,
    hookpoints_in,
    hub_patterns,
    load_tensors,
    locate,
    looks_like_checkpoint,
    parse_eleuther_cfg,
    read_json_object,
    refuse_pickles,
    unbox_run,
)
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.files import SAE_CONFIG, SAE_META, SAE_WEIGHTS
from saeuron.utils.hub import is_hub_id, local_snapshot

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class SaeHeader:
    """An SAE checkpoint's layout and size, known without loading it."""

    folder: Path
    format: str
    d_in: int
    num_latents: int
    hookpoint: str | None
    """Where it reads: the folder's name in a multi-SAE repo, its ``saeuron.json``, or None."""
    activation_site: str


def read_sae_header(
    name_or_path: str | Path, hookpoint: str | None = None, setting: str = "sae"
) -> SaeHeader | None:
    """The header of the SAE ``name_or_path`` names, as :meth:`Sae.from_pretrained` would find
    it; None for a hub repo not in the local cache while the hub is reachable (it is checked
    when downloaded). A missing, malformed or inconsistent checkpoint is a one-line error.
    """
    folder = _local_folder(str(name_or_path), hookpoint, setting)
    if folder is None:
        return None
    found = locate(folder, hookpoint) if hookpoint else None
    if found is not None:
        folder = found
    elif not looks_like_checkpoint(folder) and (hookpoint or hookpoints_in(folder)):
        available = hookpoints_in(folder)
        if not available:
            refuse_pickles(folder)
        raise ConfigError(
            "hookpoint",
            (f"no SAE for {hookpoint!r} in {name_or_path}" if hookpoint else
             f"{name_or_path} holds one SAE per hookpoint; name one")
            + f"; it holds SAEs for {', '.join(available) or 'no hookpoint'}",
        )  # fmt: skip
    fmt = detect_format(folder)
    if fmt == "sdxl-unbox":
        d_in, n = _unbox_size(folder)
        run = unbox_run(folder)
        default_hookpoint = run.group("hookpoint") if run else None
        site = "update"
    else:
        d_in, n = _eleuther_size(folder)
        default_hookpoint, site = None, "output"
    meta: Mapping[str, Any] = {}
    if (folder / SAE_META).is_file():
        meta = read_json_object(folder / SAE_META)
    return SaeHeader(
        folder=folder,
        format=fmt,
        d_in=d_in,
        num_latents=n,
        hookpoint=hookpoint or meta.get("hookpoint") or default_hookpoint,
        activation_site=str(meta.get("activation_site", site)),
    )


def _local_folder(name: str, hookpoint: str | None, setting: str) -> Path | None:
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(setting, f"{name} is a file; expected an SAE folder")
        return path
    if not is_hub_id(name):
        raise ConfigError(
            setting, f"got {name!r}: no such folder, and not a Hugging Face repo id (owner/name)"
        )
    patterns = hub_patterns(hookpoint) if hookpoint else None
    return local_snapshot(name, "SAE", allow_patterns=patterns)


def tensor_shapes(path: Path) -> Shapes:
    """Names and shapes of the tensors in a safetensors file, from its header alone."""
    checked_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise FileFormatError(
            path, f"not a readable safetensors file ({_one_line(err)})"
        ) from None


def _torch_load(path: Path) -> Any:
    try:
        # mmap: the storages stay on disk; only the pickle's index is read.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # a legacy (non-zip) file cannot be mapped: read it
            raise FileFormatError(path, f"not a readable torch file ({_one_line(err)})") from None
    return load_tensors(path)


def _pth_shapes(path: Path) -> Shapes:
    try:
        raw = _torch_load(path)
    except FileFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FileFormatError(path, f"not a readable torch file ({_one_line(err)})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping):
        raise FileFormatError(path, f"expected a dict of tensors, got {type(state).__name__}")
    shapes: Shapes = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise FileFormatError(path, f"{key} is a {type(value).__name__}, not a tensor")
        shapes[str(key)] = tuple(value.shape)
    return shapes


def _require(path: Path, shapes: Shapes, expected: Shapes, optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in expected if k not in shapes]
    extra = sorted(set(shapes) - set(expected) - set(optional))
    if missing or extra:
        raise FileFormatError(
            path,
            f"tensors {sorted(shapes)}; expected {list(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else ""),
        )
    for key, want in expected.items():
        if shapes[key] != want:
            raise FileFormatError(
                path, f"{key} has shape {shapes[key]}, the config implies {want}"
            )


def _eleuther_size(folder: Path) -> tuple[int, int]:
    cfg = parse_eleuther_cfg(folder / SAE_CONFIG, read_json_object(folder / SAE_CONFIG))
    assert cfg.d_in is not None  # parse_eleuther_cfg refuses a config without a width
    n, d = cfg.num_latents, cfg.d_in
    want = {"encoder.weight": (n, d), "encoder.bias": (n,), "W_dec": (n, d), "b_dec": (d,)}
    if (folder / SAE_WEIGHTS).is_file():
        path = folder / SAE_WEIGHTS
        _require(path, tensor_shapes(path), want)
    else:
        path = folder / PTH_FILE
        shapes = _pth_shapes(path)
        renamed = {"pre_bias": "b_dec", "latent_bias": "encoder.bias"}
        ours: Shapes = {}
        for key, shape in shapes.items():
            if key == "decoder.weight":
                ours["W_dec"] = tuple(reversed(shape))
            elif key not in UNBOX_BUFFERS:
                ours[renamed.get(key, key)] = shape
        _require(path, ours, {k: want[k] for k in SPARSIFY_KEYS})
    return d, n


def _unbox_size(folder: Path) -> tuple[int, int]:
    path = folder / (UNBOX_SAFETENSORS if (folder / UNBOX_SAFETENSORS).is_file() else PTH_FILE)
    shapes = tensor_shapes(path) if path.suffix == ".safetensors" else _pth_shapes(path)
    encoder = shapes.get("encoder.weight")
    if encoder is None or len(encoder) != 2:
        raise FileFormatError(path, f"encoder.weight must be 2-D; tensors {sorted(shapes)}")
    n, d = encoder
    want = {
        "encoder.weight": (n, d),
        "decoder.weight": (d, n),
        "pre_bias": (d,),
        "latent_bias": (n,),
    }
    _require(path, shapes, {k: want[k] for k in UNBOX_KEYS}, optional=UNBOX_BUFFERS)
    if (folder / UNBOX_CONFIG).is_file():
        config = read_json_object(folder / UNBOX_CONFIG)
        for key, value in (("n_dirs_local", n), ("d_model", d)):
            if key in config and config[key] != value:
                raise FileFormatError(
                    folder / UNBOX_CONFIG, f"{key} is {config[key]!r} but {path.name} holds {value}"
                )
    for name in LATENT_STATS.values():
        if (folder / name).is_file():
            _pth_shapes_of_tensor(folder / name, (n,))
    return d, n


def _pth_shapes_of_tensor(path: Path, want: tuple[int, ...]) -> None:
    try:
        value = _torch_load(path)
    except FileFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FileFormatError(path, f"not a readable torch file ({_one_line(err)})") from None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise FileFormatError(path, f"expected a tensor of shape {want}, got {shape}")
