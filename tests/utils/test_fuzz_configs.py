"""Property tests of the config parsers: whatever a file holds, never a traceback.

``Config.from_dict`` (sampling, SAE, training, capture and technique configs) and the eval
config parser get random JSON: random keys and values, and valid configs with one value
replaced by a random one. Each either accepts it or raises a one-line :class:`ConfigError`
whose field is a key of the input (or one the config requires); a valid config always comes
back the same through ``to_dict``. The default tier runs a bounded number of examples; the
slow tier runs many more.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from saeuron.erasure.technique import SAeUronConfig  # noqa: E402
from saeuron.eval.config import TOP_KEYS, parse_eval_config  # noqa: E402
from saeuron.models.sampling import SamplingConfig  # noqa: E402
from saeuron.sae.config import SaeConfig  # noqa: E402
from saeuron.training.capture import CacheConfig  # noqa: E402
from saeuron.training.trainer import TrainConfig  # noqa: E402
from saeuron.utils.config import Config, ConfigError  # noqa: E402
from saeuron.utils.config_checks import key_name  # noqa: E402
from saeuron.utils.errors import UserError  # noqa: E402

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ROOT = Path(tempfile.mkdtemp(prefix="saeuron-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
(_ROOT / "prompts.txt").write_text("a cat\na dog\n")

# Valid configs, one per class, that the mutations start from.
BASES: dict[type[Config], dict[str, Any]] = {
    SamplingConfig: {},
    SaeConfig: {"d_in": 16},
    TrainConfig: {"activations": str(_ROOT / "acts"), "out": str(_ROOT / "out")},
    CacheConfig: {"model": "tiny-sd", "hookpoint": "unet.up_blocks.1.attentions.1",
                  "prompts": str(_ROOT / "prompts.txt"), "out": str(_ROOT / "acts")},
    SAeUronConfig: {"erase_concept": "moon", "model": "minicanvas"},
}  # fmt: skip

NASTY_TEXT = st.sampled_from(
    ["", " ", "nan", "inf", "-inf", "1e309", "-1", "0", "1.5", "true", "null", "cuda",
     "cuda:7", "cpu", "../..", "/", "a,b,,c", "[1, 2]", '{"a": 1}', "\u00e9\u00df\u4e2d",
     "x" * 300]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    NASTY_TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6,
)  # fmt: skip


def _root(field: str) -> str:
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def _accepted_or_named(call: Callable[[], Any], data: Mapping[str, Any], known: set[str]) -> Any:
    """``call()``'s result, or None when it raised a one-line ConfigError naming a key of
    ``data`` or of the config (``known``). Any other exception fails the test."""
    try:
        return call()
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and "Traceback" not in message, message
        assert message.startswith(f"{err.field}: "), message
        named = _root(err.field) in {str(k) for k in data} | known or any(
            key_name(k) in err.field for k in data
        )
        assert named, (err.field, dict(data))
        return None


def _check_from_dict(cls: type[Config], data: dict[str, Any]) -> None:
    known = set(cls.config_keys()) | {cls.__name__}
    cfg = _accepted_or_named(lambda: cls.from_dict(data), data, known)
    if cfg is not None:
        # Valid input is accepted, and what it became reads back as itself.
        assert cls.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def _random_dict(cls: type[Config]) -> st.SearchStrategy[dict[str, Any]]:
    # Integer keys too: a YAML file can have them.
    keys = st.sampled_from(cls.config_keys()) | st.text(max_size=8) | st.integers(-3, 3)
    return st.dictionaries(keys, JSON, max_size=5)


def _one_changed(cls: type[Config]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda key, value: {**BASES[cls], key: value}, st.sampled_from(cls.config_keys()), JSON
    )


CLASSES = st.sampled_from(sorted(BASES, key=lambda c: c.__name__))


@st.composite
def config_inputs(draw: st.DrawFn) -> tuple[type[Config], dict[str, Any]]:
    cls = draw(CLASSES)
    return cls, draw(_one_changed(cls) | _random_dict(cls))


def test_the_bases_are_valid() -> None:
    for cls, base in BASES.items():
        cls.from_dict(base)


@FEW
@given(config_inputs())
def test_config_from_dict_never_tracebacks(case: tuple[type[Config], dict[str, Any]]) -> None:
    _check_from_dict(*case)


@pytest.mark.slow
@MANY
@given(config_inputs())
def test_config_from_dict_never_tracebacks_many(case: tuple[type[Config], dict[str, Any]]) -> None:
    _check_from_dict(*case)


@FEW
@given(st.sampled_from(sorted(BASES, key=lambda c: c.__name__)), JSON)
def test_a_config_that_is_not_an_object_is_named(cls: type[Config], data: Any) -> None:
    if isinstance(data, Mapping):
        return
    with pytest.raises(ConfigError, match=f"^{cls.__name__}: expected an object"):
        cls.from_dict(data)


# -- the eval config ---------------------------------------------------------------------------

EVAL_BASE: dict[str, Any] = {
    "output_dir": str(_ROOT / "run"),
    "technique": {"name": "saeuron", "config": {"erase_concept": "moon", "model": "minicanvas"}},
    "metric": {"name": "clip_score", "config": {}},
}
TECHNIQUE_KEYS = SAeUronConfig.config_keys()


@st.composite
def eval_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """The valid base with one place changed: a top-level key, a technique or metric key,
    a spec's name, or the whole of a part replaced by random JSON."""
    data = {
        "output_dir": EVAL_BASE["output_dir"],
        "technique": {"name": "saeuron", "config": dict(EVAL_BASE["technique"]["config"])},
        "metric": {"name": "clip_score", "config": {}},
    }
    where = draw(st.sampled_from(["top", "technique", "metric", "name", "part"]))
    value = draw(JSON)
    if where == "top":
        data[draw(st.sampled_from(TOP_KEYS) | st.text(max_size=8))] = value
    elif where == "technique":
        data["technique"]["config"][draw(st.sampled_from(TECHNIQUE_KEYS))] = value
    elif where == "metric":
        key = draw(st.sampled_from(["prompts", "device", "batch_size", "model", "seed"]))
        data["metric"]["config"][key] = value
    elif where == "name":
        part = draw(st.sampled_from(["technique", "metric"]))
        data[part]["name"] = draw(NASTY_TEXT | st.sampled_from(["none", "ua_ira", "fid"]))
    else:
        data[draw(st.sampled_from(["technique", "metric", "metrics"]))] = value
    return data


def _check_eval(data: dict[str, Any]) -> None:
    try:
        _accepted_or_named(lambda: parse_eval_config(data), data, set(TOP_KEYS))
    except UserError as err:  # a file named in the config that cannot be read, say
        assert "\n" not in str(err), str(err)


def test_the_eval_base_is_valid() -> None:
    parse_eval_config(EVAL_BASE)


@FEW
@given(eval_inputs())
def test_eval_config_never_tracebacks(data: dict[str, Any]) -> None:
    _check_eval(data)


@FEW
@given(JSON)
def test_an_eval_config_of_any_json_is_refused_by_name(data: Any) -> None:
    _check_eval(data if isinstance(data, dict) else {"output_dir": data})


@pytest.mark.slow
@MANY
@given(eval_inputs())
def test_eval_config_never_tracebacks_many(data: dict[str, Any]) -> None:
    _check_eval(data)
