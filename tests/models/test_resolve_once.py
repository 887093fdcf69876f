"""A model argument is looked up once, where it enters (a public constructor or a command);
everything below takes the resolved model and never looks it up by name again."""

from __future__ import annotations

import pytest

import saeuron.models.bundle_lookup as bundle_lookup
import saeuron.models.resolve as resolve
from saeuron.erasure.technique import SAeUron
from saeuron.eval import parse_eval_config
from saeuron.eval.runner import plan
from saeuron.models.pipelines import load_pipeline
from saeuron.models.resolve import ResolvedModel, resolve_model
from saeuron.utils.errors import ConfigError


class Lookups:
    """The resolver's look-ups (``names``) and every by-name bundle search (``searches``:
    each ``find_bundle`` of a plain name walks the bundle roots, whoever calls it)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.searches = 0


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Lookups:
    seen = Lookups()
    find, roots = bundle_lookup.find_bundle, bundle_lookup.bundle_roots

    def counting_find(model):
        seen.names.append(str(model))
        return find(model)

    def counting_roots():
        seen.searches += 1
        return roots()

    monkeypatch.setattr(resolve, "find_bundle", counting_find)
    # Patched where find_bundle reads it: a look-up from anywhere else is counted too.
    monkeypatch.setattr(bundle_lookup, "bundle_roots", counting_roots)
    return seen


def test_resolving_finds_the_bundle_once_and_a_resolved_model_is_kept(lookups) -> None:
    model = resolve_model("minicanvas")
    assert model.bundle is not None and model.bundle.name == "minicanvas"
    assert model.source == str(model.bundle.folder) and str(model) == "minicanvas"
    assert resolve_model(model) is model
    assert lookups.names == ["minicanvas"] and lookups.searches == 1
    plain = resolve_model("someone/else")
    assert plain.bundle is None and plain.source == "someone/else"


def test_a_pipeline_without_a_name_is_one_error_naming_the_model() -> None:
    class Nameless:
        config = object()

    with pytest.raises(ConfigError, match="^model: the pipeline has no name_or_path"):
        resolve_model(Nameless())


def test_load_pipeline_resolves_a_name_once_and_a_resolved_model_never(lookups) -> None:
    pipe = load_pipeline("minicanvas", device="cpu")
    assert lookups.names == ["minicanvas"] and lookups.searches == 1
    resolved = resolve_model("tiny-sd")
    lookups.names.clear()
    lookups.searches = 0
    load_pipeline(resolved, device="cpu")
    assert lookups.names == [] and lookups.searches == 0
    assert pipe is not None


@pytest.mark.parametrize("preset", ["recipe", "paper"])
def test_one_technique_looks_its_model_up_once(lookups, preset: str) -> None:
    # 'recipe': the bundle's tuned recipe for moon; 'paper': its SAE and shipped features.
    tech = SAeUron(erase_concept="moon", model="minicanvas", device="cpu", preset=preset)
    assert (tech.recipe is not None) == (preset == "recipe")
    assert lookups.names == ["minicanvas"] and lookups.searches == 1
    # Per-call overrides re-check the settings without looking the model up again.
    tech.generate(["An image of moon."], seed=0, num_inference_steps=2)
    assert lookups.names == ["minicanvas"] and lookups.searches == 1


def test_a_given_pipeline_stands_for_its_model_and_is_looked_up_once(lookups) -> None:
    minicanvas = resolve_model("minicanvas")
    pipe = load_pipeline(minicanvas, device="cpu")
    lookups.names.clear()
    lookups.searches = 0
    tech = SAeUron(pipe=pipe, erase_concept="moon", preset="paper")
    # The pipeline records the bundle's folder: looked up once, as a folder.
    assert tech.pipe is pipe and tech.config.resolved_model.bundle == minicanvas.bundle
    assert lookups.names == [tech.config.model] and lookups.searches == 0
    # The pipeline itself resolves to its model, and is kept with it.
    from_pipe = resolve_model(pipe)
    assert isinstance(from_pipe, ResolvedModel) and from_pipe.pipe is pipe
    assert from_pipe.bundle == minicanvas.bundle


def test_an_eval_run_looks_its_model_up_once(lookups, tmp_path) -> None:
    classifier = str(resolve_model("minicanvas").source)  # a folder: its own look-up
    lookups.names.clear()
    lookups.searches = 0
    cfg = parse_eval_config({
        "output_dir": str(tmp_path / "run"),
        "technique": {"name": "saeuron", "config": {
            "erase_concept": "moon", "model": "minicanvas", "device": "cpu",
        }},
        "metrics": [{"name": "unlearncanvas", "config": {"classifier": classifier}}],
    })  # fmt: skip
    assert lookups.names == ["minicanvas", classifier] and lookups.searches == 1
    # The plan and the preflight (files, sizes, a copy of the config per device) read it.
    assert plan(cfg)["technique"]["needs"][0]["available"]
    assert lookups.names == ["minicanvas", classifier] and lookups.searches == 1
