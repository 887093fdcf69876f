"""Compatibility: ``saeuron.technique`` moved to :mod:`saeuron.erasure.technique`.

Kept for code and entry points written against earlier releases.
"""

from saeuron.erasure.technique import SAeUron, SAeUronConfig

__all__ = ["SAeUron", "SAeUronConfig"]
