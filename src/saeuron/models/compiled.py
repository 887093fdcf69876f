"""Hooks on compiled models.

``torch.compile`` does not guard on module hooks (``torch._dynamo.config
.skip_nnmodule_hook_guards``, on by default): a graph compiled before an erasure's hooks were
added keeps running without them, and one compiled with them may outlive their removal. An
erasure that silently does nothing is the worst failure this library can have, so adding or
removing its hooks on a pipeline that holds a compiled module drops the compiled graphs; the
next call compiles again, with the hooks as they now are.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _compiled(module: nn.Module) -> bool:
    # torch.compile(m) wraps m in a module holding it as _orig_mod; m.compile() keeps m and
    # sets its _compiled_call_impl (diffusers compiles repeated blocks that way).
    return any(
        hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None
        for m in module.modules()
    )


def holds_compiled(pipe: Any) -> bool:
    """Whether a module of ``pipe`` (its components, or ``pipe`` itself) was compiled."""
    if isinstance(pipe, nn.Module):
        return _compiled(pipe)
    parts = vars(pipe).values() if hasattr(pipe, "__dict__") else ()
    return any(_compiled(part) for part in parts if isinstance(part, nn.Module))


def hooks_changed(pipe: Any) -> None:
    """Call after adding or removing hooks on ``pipe``'s modules: where one of them is
    compiled, its graphs are dropped so that the next call sees the hooks."""
    if holds_compiled(pipe):
        logger.info("a compiled module's hooks changed: it compiles again at its next call")
        torch._dynamo.reset()
