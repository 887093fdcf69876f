"""The ``model`` key of a config that resolves its model (:class:`ModelKey`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saeuron.utils.config_parts import ModelName

__all__ = ["ModelKey"]


class ModelKey(ModelName):
    """The ``model`` key (:class:`~saeuron.utils.config_parts.ModelName`) of a config that
    resolves it (:class:`~saeuron.models.resolve.ResolvesModel`): from Python it may also be
    a :class:`~saeuron.models.resolve.ResolvedModel`, kept as given for the config to take
    without looking it up again, as the config's own field would be. JSON and the command
    line give names, which are checked as the part declares."""

    def replace(self, **changes: Any) -> ModelKey:
        model = changes.get("model")
        if model is not None and not isinstance(model, (str, Path)):
            return dataclasses.replace(self, **changes)
        return super().replace(**changes)
