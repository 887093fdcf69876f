"""The ``model`` key of a config that resolves its model (:class:`ModelKey`)."""

from __future__ import annotations

from saeuron.utils.config_parts import KeepsObjects, ModelName

__all__ = ["ModelKey"]


class ModelKey(KeepsObjects, ModelName):
    """The ``model`` key (:class:`~saeuron.utils.config_parts.ModelName`) of a config that
    resolves it (:class:`~saeuron.models.resolve.ResolvesModel`): from Python it may also be
    a :class:`~saeuron.models.resolve.ResolvedModel` or a pipeline, kept as given for the
    config to take without looking it up again. JSON and the command line give names, which
    are checked as the part declares."""
