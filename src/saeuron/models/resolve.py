"""Turning a model argument into what the code below needs, once, at the edges.

A model is named by a bundle name (``minicanvas``), a folder, a hub id or a test model
(``tiny-sd``), or handed over as a loaded pipeline. :func:`resolve_model` looks it up once and
returns a :class:`ResolvedModel`: the bundle if it is one (its paths and defaults), the name
or folder to load, and the pipeline if one was given. The CLI commands and the public
constructors call it (a config with a ``model`` field resolves it as it is built, through
:class:`ResolvesModel`); everything below them takes the :class:`ResolvedModel` and never
looks a model up by name again. Torch-free, like :mod:`saeuron.models.bundle_lookup`: the
config modules that ``--help`` imports use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeuron.models.bundle_lookup import Bundle, find_bundle
from saeuron.utils.errors import ConfigError


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument, looked up: see :func:`resolve_model`."""

    name: str
    """The model as the user named it: what errors name and caches key on."""
    bundle: Bundle | None = None
    """The bundle ``name`` names, with its paths and sampling defaults; None for any other."""
    pipe: Any | None = None
    """The loaded pipeline the caller handed over, else None (it is loaded from ``source``)."""

    @property
    def source(self) -> str:
        """What ``from_pretrained`` loads: a bundle's folder, else the name itself."""
        return str(self.bundle.folder) if self.bundle is not None else self.name

    def __str__(self) -> str:
        # Error messages and log lines name the model as the user did.
        return self.name


ModelArg = str | Path | ResolvedModel
"""What a public entry point accepts as a model: a name, a folder, or one already resolved."""


def pipeline_name(pipe: Any, setting: str = "model") -> str:
    """The name or folder a diffusers pipeline was loaded from; one that records none is a
    one-line error naming ``setting`` (the model it is must then be named)."""
    config = getattr(pipe, "config", None)
    name = getattr(pipe, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if not name:
        raise ConfigError(
            setting,
            "the pipeline has no name_or_path; name the model it is (its sampling "
            "defaults and the statistics cache key on it)",
        )
    return str(name)


def resolve_model(model: ModelArg | Any, setting: str = "model") -> ResolvedModel:
    """The one look-up of a model: a name, folder, hub id or pipeline -> :class:`ResolvedModel`.

    A :class:`ResolvedModel` comes back as it is, so an entry point that is also called from
    below an edge costs nothing there. A pipeline stands for the model it was loaded from (its
    sampling defaults and the statistics cache key on that name); one without a name is a
    one-line error naming ``setting``. Only pulled hub bundles are found: no network is asked.
    """
    if isinstance(model, ResolvedModel):
        return model
    if isinstance(model, (str, Path)):
        name = str(model)
        return ResolvedModel(name, find_bundle(name))
    name = pipeline_name(model, setting)
    return ResolvedModel(name, find_bundle(name), pipe=model)


class ResolvesModel:
    """For a config with a ``model`` field: the config is where a model name enters, so its
    ``__post_init__`` calls :meth:`_resolve_model` once and everything that reads the config
    takes :attr:`resolved_model` rather than looking the name up again. A config may also be
    built with a :class:`ResolvedModel` as ``model`` (kept as it is, not looked up again)."""

    model: str
    _model: ResolvedModel

    def _resolve_model(self) -> ResolvedModel:
        self._model = resolve_model(self.model)
        # The field keeps the plain name: JSON, the CLI and caches read it.
        self.model = self._model.name
        return self._model

    @property
    def resolved_model(self) -> ResolvedModel:
        """The model, looked up when this config was built."""
        return self._model
