"""Device strings in configs, checked without loading torch until one is given.

Every config with a ``device`` field checks it on construction, and ``--help`` builds the
configs' defaults (``device=None``): this module keeps that free of torch.
"""

from __future__ import annotations

from saeuron.utils.errors import ConfigError


def check_device(name: str, value: str | None) -> None:
    """Reject a device string torch cannot parse (``None`` means auto-detect)."""
    if value is None:
        return
    # torch's own parser is the only exact judge of a device string; a config that names a
    # device is about to run on it, so torch is loaded here rather than at import.
    import torch  # noqa: PLC0415

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            name, f"got {value!r}; expected e.g. 'cpu', 'cuda', 'cuda:1', 'mps' or null (auto)"
        ) from None
