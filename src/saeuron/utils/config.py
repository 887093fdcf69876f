"""Typed configs shared by the Python API, JSON files and the command line.

Every config is a dataclass deriving from :class:`Config`. A field declares, with
:func:`field`, its help text and what it accepts (``choices``, bounds ``ge``/``gt``/``le``/
``lt``, whether it is a positional argument on the command line). Validation of those
declarations runs for every construction, from JSON, from the command line or from Python;
cross-field rules live in the subclass's ``__post_init__`` after ``super().__post_init__()``.
A bad value raises :class:`ConfigError` naming the field and what it accepts, so bad input
fails before any heavy work starts. Floats must be finite unless a field says otherwise.

A field whose type is itself a :class:`Config` nests it. Nested configs declared with
``flatten=True`` share their parent's namespace: their keys are written and read at the
parent's level (``{"num_inference_steps": 20}``, not ``{"sampling": {...}}``), and their
command-line flags are the parent's. That keeps one declaration of, say, the sampling settings
while JSON files and flags stay flat. A config that nests a shared part (the parts every
command shares are in :mod:`saeuron.utils.config_parts`) sets its own defaults with the
instance it nests (``field(Output(out="demo.png"), flatten=True, ...)``) and may say what a
key means for it with ``describe={"out": "the before/after grid"}``: one declaration, each
command's own words in ``--help``.

A field renamed keeps its old name as an alias (``field(..., aliases=("old_name",))``): JSON
keys, keyword arguments and the command line (a hidden ``--old-name``) still accept it, with a
deprecation message, so that configs written before the rename keep working. Giving both
names is an error: which one was meant cannot be told.

Why not tyro, simple-parsing or pydantic: each covers part of this (typed fields, argparse
generation, validation), but none of them gives flattened nested configs, eval-unlearn's
JSON schema and the CLI's one-line, did-you-mean errors from one declaration without a layer
of adapters of about this module's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

from saeuron.utils.config_checks import (
    check_choice,
    check_finite,
    check_range,
    describe_bounds,
    reject_unknown,
    rename_aliases,
)
from saeuron.utils.errors import ConfigError
from saeuron.utils.text import read_text

__all__ = ["Config", "ConfigError", "check_choice", "check_finite", "check_range", "field"]

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="Config")


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    positional: bool = False,
    flatten: bool = False,
    describe: Mapping[str, str] | None = None,
    limits: Mapping[str, Mapping[str, float]] | None = None,
    required: Sequence[str] = (),
    positionals: Sequence[str] = (),
    metavar: str | None = None,
    aliases: Sequence[str] = (),
    **kwargs: Any,
) -> Any:
    """A dataclass field with its help text and the values it accepts.

    ``choices`` and the bounds are checked on every construction and shown by ``--help``.
    ``finite=False`` lets a float field hold inf or NaN (none does today). ``positional``
    makes it a positional command-line argument. ``flatten`` (nested configs) puts the
    nested fields at this config's level in JSON and on the command line; ``describe`` then
    gives nested keys the help text they have here (key -> text), and ``limits`` the tighter
    bounds they have here (key -> ``{"le": 4096}``), checked and shown like their own;
    ``required`` names nested keys this config cannot do without (a part's key may be
    optional elsewhere): null is refused, and so is a missing one this config gives no
    default (then it is required on the command line too); ``positionals`` makes nested keys
    positional command-line arguments here.
    ``aliases`` are old names of the field, still accepted (module docstring).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "bounds": {
            k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None
        },
        "finite": finite,
        "positional": positional,
        "flatten": flatten,
        "describe": dict(describe or {}),
        "limits": {k: dict(v) for k, v in (limits or {}).items()},
        "required": tuple(required),
        "positionals": tuple(positionals),
        "metavar": metavar,
        "aliases": tuple(aliases),
        **kwargs.pop("metadata", {}),
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    if isinstance(default, type) and issubclass(default, Config):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, Config):
        prototype = default
        return dataclasses.field(
            default_factory=lambda: dataclasses.replace(prototype), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return tp, type(None) in typing.get_args(tp)
    return tp, False


def _config_type(tp: Any) -> type[Config] | None:
    inner, _ = _unwrap_optional(tp)
    return inner if isinstance(inner, type) and issubclass(inner, Config) else None


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert JSON/CLI values to the field's type; reject what cannot be converted."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "must not be null")
    nested = _config_type(inner)
    if nested is not None:
        if isinstance(value, nested):
            return value
        return nested.from_dict(value, where=name)
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if inner is str:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return str(value)
        if origin in (list, tuple, Sequence) or inner in (list, tuple):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            if isinstance(value, Mapping) or not isinstance(value, Iterable):
                raise TypeError
            (item_tp, *_) = typing.get_args(inner) or (Any,)
            items = [_coerce(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple or inner is tuple else items
        if origin in (dict, Mapping) or inner is dict:
            if isinstance(value, str):
                # From the command line: a JSON object.
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise TypeError
            args = typing.get_args(inner)
            if len(args) == 2:
                return {str(k): _coerce(f"{name}.{k}", args[1], v) for k, v in value.items()}
            return dict(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(name, f"got {value!r}; expected {_type_name(inner)}") from err
    if typing.get_origin(inner) in (Union, types.UnionType):
        # Union of scalars (e.g. float | dict): try each in declaration order.
        for option in typing.get_args(inner):
            if option is type(None):
                continue
            try:
                return _coerce(name, option, value)
            except ConfigError:
                continue
        raise ConfigError(name, f"got {value!r}; expected {_type_name(inner)}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _check_declared(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    """The field's own declaration: finite floats, choices, bounds (per item of a list)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if item is None or isinstance(item, Config):
            continue
        if meta.get("finite", True):
            check_finite(name, item)
            if isinstance(item, Mapping):
                for key, entry in item.items():
                    check_finite(f"{name}.{key}", entry)
        if meta.get("choices") is not None:
            check_choice(name, item, meta["choices"])
        bounds = meta.get("bounds") or {}
        if bounds and isinstance(item, (int, float)) and not isinstance(item, bool):
            check_range(name, item, **bounds)


class _ConfigMeta(type):
    """Lets a config be built with the keys of its flattened nested configs, as in JSON:
    ``ConceptBuildConfig(concept="cat", ..., num_inference_steps=20)``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if dataclasses.is_dataclass(cls):
            aliases = cls.config_aliases()  # type: ignore[attr-defined]
            if aliases.keys() & kwargs.keys():
                kwargs = rename_aliases("", kwargs, aliases)
            own = {f.name for f in dataclasses.fields(cls)}
            for name, nested in cls._flattened().items():  # type: ignore[attr-defined]
                given = {
                    k: kwargs.pop(k) for k in nested.config_keys() if k in kwargs and k not in own
                }
                if given:
                    base = kwargs.pop(name, None)
                    if base is None:
                        field_ = next(f for f in dataclasses.fields(cls) if f.name == name)
                        base = _default_of(field_)
                    kwargs[name] = base.replace(**given)
        return super().__call__(*args, **kwargs)


def _check_limits(
    where: str, f: dataclasses.Field, part: type[Config], data: Mapping[str, Any]
) -> None:
    """A nesting config's tighter bounds on its part's keys, checked before the part's own:
    the message is then the one a key declared with those bounds would give."""
    for key, tighter in f.metadata.get("limits", {}).items():
        value = data.get(key)
        declared = _unwrap_optional(part._hints()[key])[0]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        # Only a value of the key's own type: anything else gets coercion's own message.
        if not number or (declared is int and not isinstance(value, int)):
            continue
        if declared is float:
            value = float(value)  # as the message of the coerced value reads
        own = part.__dataclass_fields__[key].metadata.get("bounds", {})
        check_range(f"{where}.{key}" if where else key, value, **{**own, **tighter})


def refuse_null(config: Config, *keys: str, message: str = "must not be null") -> None:
    """Refuse ``None`` for keys a config cannot do without, where the shared part it nests
    lets them be unset (``None`` means "the default" elsewhere)."""
    for key in keys:
        if config.value(key) is None:
            raise ConfigError(key, message)


@functools.cache
def _flattened_of(cls: type[Config]) -> dict[str, type[Config]]:
    hints = cls._hints()
    return {
        f.name: _config_type(hints[f.name])  # type: ignore[misc]
        for f in dataclasses.fields(cls)
        if f.init and f.metadata.get("flatten") and _config_type(hints[f.name])
    }


@functools.cache
def _key_owners(cls: type[Config]) -> dict[str, str]:
    """Each key of a flattened nested config (at any depth) -> this config's field holding
    it: reads and writes of ``cfg.key`` go there in one lookup."""
    owners: dict[str, str] = {}
    for name, nested in _flattened_of(cls).items():
        for key in nested.config_keys():
            owners.setdefault(key, name)
    return owners


def _null_message(f: dataclasses.Field, key: str) -> str:
    """What a required nested key that is None lacks: a value at all, or one other than null
    (where this config has a default)."""
    return "required" if getattr(_default_of(f), key) is None else "must not be null"


def _without_default(f: dataclasses.Field, part: Config) -> list[str]:
    """The required keys of a nested ``part`` it holds no value for."""
    return [k for k in f.metadata.get("required", ()) if getattr(part, k) is None]


def _check_fields(config: Config) -> None:
    for f in dataclasses.fields(config):
        if f.init:
            _check_declared(f.name, getattr(config, f.name), f.metadata)
            for key in f.metadata.get("required", ()):
                if getattr(config, key) is None:
                    raise ConfigError(key, _null_message(f, key))
            for key, bounds in f.metadata.get("limits", {}).items():
                _check_declared(key, getattr(config, key), {"bounds": bounds})


@dataclasses.dataclass
class Config(metaclass=_ConfigMeta):
    """Base of every config: validation, dict/JSON round trip and argparse generation."""

    def __post_init__(self) -> None:
        _check_fields(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None:
            return

        # The declared checks (finite floats, bounds, choices) run before a subclass's own
        # __post_init__ even where it forgets super().__post_init__(): a NaN must never
        # reach a cross-field rule (every comparison with NaN is False) or the model.
        @functools.wraps(own)
        def post_init(self: Config) -> None:
            _check_fields(self)
            own(self)

        cls.__post_init__ = post_init  # type: ignore[method-assign]

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def _flattened(cls) -> dict[str, type[Config]]:
        """Nested configs whose fields live at this level: field name -> config class."""
        return _flattened_of(cls)

    @classmethod
    def config_keys(cls) -> list[str]:
        """Every key this config accepts at its level (flattened nested ones included)."""
        names = []
        flat = cls._flattened()
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in flat:
                names.extend(flat[f.name].config_keys())
            else:
                names.append(f.name)
        return names

    @classmethod
    def config_aliases(cls) -> dict[str, str]:
        """Old names of this config's keys at its level (flattened nested ones included):
        old -> new."""
        aliases: dict[str, str] = {}
        flat = cls._flattened()
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in flat:
                aliases.update(flat[f.name].config_aliases())
            else:
                aliases.update((old, f.name) for old in f.metadata.get("aliases", ()))
        return aliases

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(
                where or cls.__name__, f"expected an object, got {type(data).__name__}"
            )
        aliases = cls.config_aliases()
        reject_unknown(where, data.keys(), cls.config_keys(), aliases)
        data = rename_aliases(where, data, aliases)
        hints = cls._hints()
        flat = cls._flattened()
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.name in flat:
                _check_limits(where, f, flat[f.name], data)
                # Keys not given keep this field's default (which may differ from the
                # nested class's own defaults, e.g. a capture's guidance scale).
                own = _default_of(f).to_dict()
                own.update({k: data[k] for k in flat[f.name].config_keys() if k in data})
                kwargs[f.name] = flat[f.name].from_dict(own, where=where)
            elif f.name in data:
                key = f"{where}.{f.name}" if where else f.name
                kwargs[f.name] = _coerce(key, hints[f.name], data[f.name])
        missing = []
        for f in dataclasses.fields(cls):
            if f.init and f.name not in kwargs and _default_of(f) is dataclasses.MISSING:
                missing.append(f.name)
            for key in f.metadata.get("required", ()):
                if key in data and data[key] is None:
                    raise ConfigError(f"{where}.{key}" if where else key, "must not be null")
                if key not in data and getattr(_default_of(f), key) is None:
                    missing.append(key)
        if missing:
            key = f"{where}.{missing[0]}" if where else missing[0]
            raise ConfigError(key, "required")
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(json.loads(read_text(path, "config")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        flat = self._flattened()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in flat:
                out.update(value.to_dict())
            elif isinstance(value, Config):
                out[f.name] = value.to_dict()
            else:
                out[f.name] = (
                    dataclasses.asdict(value)
                    if dataclasses.is_dataclass(value)
                    else (_plain(value))
                )
        return out

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: a key of a flattened nested config reads
        # through (``cfg.num_inference_steps`` for ``cfg.sampling.num_inference_steps``).
        if name.startswith("__") or not dataclasses.is_dataclass(self):
            raise AttributeError(name)
        owner = _key_owners(type(self)).get(name)
        nested = self.__dict__.get(owner) if owner is not None else None
        if nested is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(nested, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # A key of a flattened nested config is written where it lives: an attribute of the
        # same name here would hide it from reads while to_dict() wrote the nested one.
        owner = None
        if dataclasses.is_dataclass(self) and name not in self.__dataclass_fields__:
            owner = _key_owners(type(self)).get(name)
        nested = self.__dict__.get(owner) if owner is not None else None
        if nested is not None:
            setattr(nested, name, value)
        else:
            object.__setattr__(self, name, value)

    def value(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` at this config's level, flattened nested configs included."""
        for f in dataclasses.fields(self):
            if f.name == key:
                return getattr(self, key)
        for name in self._flattened():
            nested = getattr(self, name)
            if key in nested.config_keys():
                return nested.value(key, default)
        return default

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` (flattened keys allowed), validated like a new config."""
        return type(self).from_dict({**self.to_dict(), **changes})

    # -- command line -----------------------------------------------------------------------

    @classmethod
    def add_arguments(
        cls,
        parser: Any,
        skip: Iterable[str] = (),
        require: bool = True,
        defaults: Config | None = None,
        flags: Mapping[str, str] | None = None,
        helps: Mapping[str, str] | None = None,
        bounds: Mapping[str, Mapping[str, float]] | None = None,
        needed: Iterable[str] = (),
        positionals: Iterable[str] = (),
    ) -> None:
        """One ``--option`` (or positional) per field, nested flattened configs included.

        Values stay strings here and are coerced and validated by :meth:`from_args`; a flag
        not given is ``None`` and leaves the field at its default. ``require=False`` leaves
        fields without a default optional at parse time (for an argument group that only
        applies with another flag); :meth:`from_args` still reports them missing.
        ``defaults`` (for a nested config) is the instance whose values ``--help`` shows.
        ``flags`` spells a field's flag otherwise than ``--field-name`` (field -> flag), where
        a command's flag names must not clash in meaning with another command's. ``helps``
        (field -> text), ``bounds`` (field -> bounds) and ``needed`` (fields) are what a
        nesting config's ``describe``, ``limits`` and ``required`` say of a field.
        """
        skip = set(skip)
        flags = dict(flags or {})
        helps = dict(helps or {})
        bounds = dict(bounds or {})
        needed = set(needed)
        positionals = set(positionals)
        hints = cls._hints()
        flat = cls._flattened()
        for f in dataclasses.fields(cls):
            if not f.init or f.name in skip:
                continue
            if f.name in flat:
                nested_default = (
                    getattr(defaults, f.name) if defaults is not None else _default_of(f)
                )
                # The outermost config's words and bounds win: it knows what the key means
                # there.
                words = {**f.metadata.get("describe", {}), **helps}
                tighter = {**f.metadata.get("limits", {}), **bounds}
                flat[f.name].add_arguments(
                    parser, skip, require, defaults=nested_default, flags=flags, helps=words,
                    bounds=tighter, needed={*_without_default(f, nested_default), *needed},
                    positionals={*f.metadata.get("positionals", ()), *positionals},
                )  # fmt: skip
                continue
            default = getattr(defaults, f.name) if defaults is not None else _default_of(f)
            if f.name in needed:
                default = dataclasses.MISSING
            _add_argument(parser, f, hints[f.name], require, default, flags.get(f.name),
                          helps.get(f.name), bounds.get(f.name),
                          f.name in positionals)  # fmt: skip

    @classmethod
    def from_args(cls: type[C], ns: argparse.Namespace, **extra: Any) -> C:
        allowed = {*cls.config_keys(), *cls.config_aliases()}
        data = {k: v for k, v in vars(ns).items() if k in allowed and v is not None}
        data.update(extra)
        return cls.from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _add_argument(
    parser: Any,
    f: dataclasses.Field,
    tp: Any,
    require: bool,
    default: Any,
    flag: str | None = None,
    text: str | None = None,
    bounds: Mapping[str, float] | None = None,
    positional: bool = False,
) -> None:
    meta = f.metadata
    inner, _ = _unwrap_optional(tp)
    # A field with an old name may come under that name: from_args reports it missing.
    required = default is dataclasses.MISSING and require and not meta.get("aliases")
    text = text or meta.get("help", "")
    notes = []
    if meta.get("choices") is not None:
        notes.append("one of " + ", ".join(str(c) for c in meta["choices"]))
    shown_bounds = {**meta.get("bounds", {}), **(bounds or {})}
    if shown_bounds:
        notes.append(describe_bounds(shown_bounds))
    # A field without a default that is optional at parse time (require=False) has no
    # default to show: dataclasses.MISSING is a sentinel, not a value.
    has_default = default is not dataclasses.MISSING and default is not None
    if not required and has_default and "default" not in text:
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        notes.append(f"default: {shown}")
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)
    # argparse treats '%' as a format character in help strings.
    text = text.replace("%", "%%")
    metavar = meta.get("metavar") or (
        "{" + ",".join(str(c) for c in meta["choices"]) + "}"
        if meta.get("choices") is not None
        else f.name.upper()
    )
    if meta.get("positional") or positional:
        parser.add_argument(f.name, metavar=metavar, help=text, nargs=None if required else "?")
        return
    flag = flag or "--" + f.name.replace("_", "-")
    # An old name is a flag of its own (its own dest) so that from_dict sees which name was
    # given: both at once is an error, the old one alone a deprecation message.
    for old in meta.get("aliases", ()):
        old_flag = "--" + old.replace("_", "-")
        if inner is bool:
            parser.add_argument(old_flag, dest=old, action=argparse.BooleanOptionalAction,
                                default=None, help=argparse.SUPPRESS)  # fmt: skip
        else:
            parser.add_argument(
                old_flag, dest=old, default=None, metavar=metavar, help=argparse.SUPPRESS
            )
    if inner is bool:
        parser.add_argument(
            flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
        )
        return
    parser.add_argument(
        flag, dest=f.name, default=None, metavar=metavar, help=text, required=required
    )
