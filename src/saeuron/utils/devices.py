"""Devices and dtypes: one resolver for every command, checked before any model loads."""

from __future__ import annotations

import torch

from saeuron.utils.device_names import check_device
from saeuron.utils.errors import MachineMismatchError

# Re-exported: configs check device strings through the torch-free module.
__all__ = [
    "check_device",
    "fast_half",
    "resolve_device",
    "sampling_dtype",
]


def resolve_device(device: str | torch.device | None = None, name: str = "device") -> torch.device:
    """The device to run on; ``None`` picks CUDA, then MPS, then the CPU.

    A device that this machine does not have is refused here, before any model loads,
    rather than failing deep inside the first tensor move.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    check_device(name, str(device))
    resolved = torch.device(device)
    # The value is valid; this machine lacks it: MachineMismatchError, which a check of the
    # file alone (--check) reports as a warning and a run refuses.
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise MachineMismatchError(
                name, f"got {str(device)!r} but CUDA is not available here; use 'cpu' or null"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise MachineMismatchError(
                name, f"got {str(device)!r} but this machine has {count} CUDA device(s)"
            )
    if resolved.type == "mps" and not _mps_available():
        raise MachineMismatchError(name, f"got {str(device)!r} but MPS is not available here")
    return resolved


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def fast_half(device: torch.device) -> bool:
    """Whether half precision is fast here: CUDA and MPS yes, CPU kernels no."""
    return device.type in ("cuda", "mps")


def sampling_dtype(device: torch.device, use_fp16: bool = True) -> torch.dtype:
    """fp16 where it is fast unless ``use_fp16`` is False; fp32 on the CPU whatever asked.

    The CPU has no fast fp16 kernels, and SD in fp16 on the CPU is both slower and less
    exact, so ``use_fp16=True`` there quietly means float32.
    """
    if not use_fp16 or not fast_half(device):
        return torch.float32
    return torch.float16
