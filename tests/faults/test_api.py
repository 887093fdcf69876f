"""Fault injection, Python API: bad values raise the named error before any model loads, and a
run whose numbers go non-finite stops instead of returning a black image."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.faults import HOOK, build_fault_files, leftovers, tree

import saeuron
from saeuron.erasure.erase import EraseConfig, attach, erase
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.erasure.technique import SAeUron
from saeuron.models.pipelines import load_pipeline
from saeuron.models.sampling import SamplingConfig
from saeuron.sae import Sae, SaeConfig
from saeuron.training.capture import CacheConfig
from saeuron.training.trainer import TrainConfig
from saeuron.utils.devices import resolve_device
from saeuron.utils.errors import (
    ConfigError,
    DegenerateOutputError,
    FileFormatError,
    ModelUnavailableError,
)
from saeuron.utils.numerics import degenerate_reason

TINY_HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return build_fault_files(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def tiny_sae() -> Sae:
    torch.manual_seed(0)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=4))
    sae.meta["hookpoint"] = TINY_HOOK
    return sae


def features_of(sae: Sae, latents=(1, 2), **meta) -> ConceptFeatures:
    return ConceptFeatures.from_latents(
        "cat", list(latents), mean=1.0, threshold=0.0,
        meta={"hookpoint": TINY_HOOK, SAE_FINGERPRINT: sae.fingerprint(), **meta},
    )  # fmt: skip


MC = {"erase_concept": "moon", "model": "minicanvas", "device": "cpu"}

# (id, keyword arguments of SAeUron, the error type, the field or file it names)
TECHNIQUE_CASES = [
    ("multiplier-nan", {"multiplier": math.nan}, ConfigError, "multiplier"),
    ("multiplier-inf", {"multiplier": -math.inf}, ConfigError, "multiplier"),
    ("multiplier-huge", {"multiplier": -1e30}, ConfigError, "multiplier"),
    ("guidance-nan", {"guidance_scale": math.nan, "guidance_half": "both"}, ConfigError,
     "guidance_scale"),  # fmt: skip
    ("steps-zero", {"num_inference_steps": 0}, ConfigError, "num_inference_steps"),
    ("steps-float", {"num_inference_steps": 2.5}, ConfigError, "num_inference_steps"),
    ("height-huge", {"height": 4096}, ConfigError, "height"),
    ("device-cuda", {"device": "cuda"}, ConfigError, "device"),
    ("unknown-key", {"multplier": -5.0}, ConfigError, "did you mean 'multiplier'"),
    ("sae-truncated", {"sae": "{F}/sae_truncated", "hookpoint": HOOK}, FileFormatError,
     "sae.safetensors"),  # fmt: skip
    ("sae-offline", {"sae": "someone/uncached-sae", "hookpoint": HOOK}, ModelUnavailableError,
     "someone/uncached-sae"),  # fmt: skip
    ("features-other-sae", {"sae": "{F}/sae_other", "hookpoint": HOOK,
                            "features": "{F}/feats/moon"}, ConfigError, "selected from SAE"),
    ("features-truncated", {"features": "{F}/feats_truncated/moon"}, FileFormatError,
     "moon.safetensors"),  # fmt: skip
]


@pytest.mark.usefixtures("forbid_model_loading")
@pytest.mark.parametrize(
    ("kwargs", "error", "names"), [c[1:] for c in TECHNIQUE_CASES],
    ids=[c[0] for c in TECHNIQUE_CASES],
)  # fmt: skip
def test_technique_refuses_before_loading(kwargs, error, names, files) -> None:
    filled = {k: v.replace("{F}", str(files)) if isinstance(v, str) else v
              for k, v in kwargs.items()}  # fmt: skip
    with pytest.raises(error, match=names.replace("(", r"\(").replace("?", r"\?")):
        SAeUron(**{**MC, **filled})


CONFIG_CASES = [
    ("erase-multipliers-nan", lambda: EraseConfig(multipliers={"cat": math.nan}),
     "multipliers.cat"),  # fmt: skip
    ("sampling-width-odd", lambda: SamplingConfig(width=12), "width"),
    ("sampling-guidance-inf", lambda: SamplingConfig(guidance_scale=math.inf), "guidance_scale"),
    ("sae-k-zero", lambda: SaeConfig(d_in=8, k=0), "k"),
    ("train-lr-nan", lambda: TrainConfig(activations="a", out="o", lr=math.nan), "lr"),
    ("features-mean-nan", lambda: ConceptFeatures.from_latents("x", [1], mean=math.nan), "mean"),
    ("features-threshold-inf",
     lambda: ConceptFeatures.from_latents("x", [1], threshold=math.inf), "threshold"),
    ("concept-build-percentile-nan", lambda: saeuron.ConceptBuildConfig(
        concept="cat", model="tiny-sd", sae="s", percentile=math.nan), "percentile"),
    ("device-missing", lambda: resolve_device("cuda:3"), "device"),
]


@pytest.mark.parametrize(("make", "names"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_configs_and_values_refuse_non_finite_and_out_of_bounds(make, names) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field.startswith(names) or names in str(err.value)


def test_cache_config_names_a_prompt_file_that_is_not_utf8(files, tmp_path) -> None:
    before = tree(tmp_path)
    with pytest.raises(FileFormatError, match="prompts_latin1.txt: not UTF-8"):
        CacheConfig(model="tiny-sd", hookpoint=TINY_HOOK, prompts=str(files / "prompts_latin1.txt"),
                    out=str(tmp_path / "acts"))  # fmt: skip
    assert tree(tmp_path) == before


def test_uncached_hub_model_while_offline_fails_at_once_naming_the_fix() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_pipeline("someone/uncached-model", device="cpu")
    assert time.perf_counter() - start < 10
    assert "'someone/uncached-model'" in str(err.value) and "--model minicanvas" in str(err.value)


@pytest.mark.slow  # waits out a refused connection
def test_unreachable_hub_fails_within_10_seconds(tmp_path) -> None:
    # No HF_HUB_OFFLINE: the hub is asked, at an address where nothing answers.
    code = (
        "import time, saeuron.models.pipelines as p\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    p.load_pipeline('someone/uncached-model', device='cpu')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, round(time.perf_counter() - t, 1), e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120).stdout.strip()  # fmt: skip
    name, seconds, message = out.split(" ", 2)
    assert name == "ModelUnavailableError", out
    assert float(seconds) < 10 and "--model minicanvas" in message


# -- erase() on a pipeline ------------------------------------------------------------------------


@pytest.mark.parametrize("multiplier", [math.nan, math.inf, -1e30, {"cat": math.nan}])
def test_erase_refuses_non_finite_strength(tiny_sd, tiny_sae, multiplier) -> None:
    with pytest.raises(ConfigError, match="multiplier"):
        with erase(tiny_sd, tiny_sae, features_of(tiny_sae), multiplier=multiplier):
            pass
    assert not tiny_sd.unet._forward_hooks  # nothing left attached


def test_set_scale_refuses_nan(tiny_sd, tiny_sae) -> None:
    with erase(tiny_sd, tiny_sae, features_of(tiny_sae), multiplier=-5.0) as erasure:
        with pytest.raises(ConfigError, match="multipliers.cat"):
            erasure.set_scale("cat", math.nan)
        assert erasure.scales == {"cat": -5.0}


def test_features_of_another_sae_are_refused_naming_both(tiny_sd, tiny_sae) -> None:
    torch.manual_seed(1)  # same shape, other weights
    other = Sae(SaeConfig(d_in=32, expansion_factor=4, k=4))
    feats = features_of(other)
    with pytest.raises(ConfigError) as err:
        attach(tiny_sd, tiny_sae, feats, multiplier=-5.0)
    message = str(err.value)
    assert other.fingerprint()[:16] in message and tiny_sae.fingerprint()[:16] in message
    assert not tiny_sd.unet._forward_hooks


def test_features_without_fingerprint_are_used_with_one_warning(tiny_sd, tiny_sae, caplog) -> None:
    old = ConceptFeatures.from_latents("cat", [1, 2], meta={"hookpoint": TINY_HOOK})
    with caplog.at_level(logging.WARNING, logger="saeuron.erasure.erase"):
        for _ in range(2):
            attach(tiny_sd, tiny_sae, old, multiplier=-5.0).remove()
    assert caplog.text.count("do not record the SAE") == 1


def _sample(pipe) -> None:
    pipe("a cat", num_inference_steps=2, guidance_scale=7.5,
         generator=torch.Generator().manual_seed(0), output_type="latent")  # fmt: skip


def test_non_finite_activations_stop_the_run(tiny_sd, tiny_sae) -> None:
    module = tiny_sd.unet.get_submodule(TINY_HOOK.removeprefix("unet."))
    poison = module.register_forward_hook(lambda m, a, out: (out[0] * math.nan, *out[1:]))
    try:
        with erase(tiny_sd, tiny_sae, features_of(tiny_sae), multiplier=-5.0):
            with pytest.raises(DegenerateOutputError, match="before any edit"):
                _sample(tiny_sd)
    finally:
        poison.remove()


def test_an_edit_that_overflows_stops_the_run(tiny_sd) -> None:
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=4))
    sae.meta["hookpoint"] = TINY_HOOK
    with torch.no_grad():
        sae.W_dec[:] = math.inf  # every latent the edit touches decodes to infinity
    feats = ConceptFeatures.from_latents(
        "cat", list(range(sae.num_latents)), threshold=-1.0,
        meta={"hookpoint": TINY_HOOK, SAE_FINGERPRINT: sae.fingerprint()},
    )  # fmt: skip
    with erase(tiny_sd, sae, feats, multiplier=-5.0):
        with pytest.raises(DegenerateOutputError, match="through the erasure of cat"):
            _sample(tiny_sd)
    assert not tiny_sd.unet._forward_hooks


def test_degenerate_images_are_recognised() -> None:
    import numpy as np
    from PIL import Image

    assert degenerate_reason(Image.new("RGB", (8, 8))) == "black"
    assert degenerate_reason(Image.new("RGB", (8, 8), (200, 30, 30))) == "constant"
    assert degenerate_reason(np.full((8, 8, 3), np.nan)) == "non-finite"
    noise = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert degenerate_reason(Image.fromarray(noise)) is None
    assert degenerate_reason(torch.rand(3, 8, 8)) is None


def test_nothing_is_left_half_written_by_a_refused_build(files, tmp_path) -> None:
    # The features file of another SAE is refused by the preflight: no output appears.
    before = tree(tmp_path)
    with pytest.raises(ConfigError):
        SAeUron(**{**MC, "sae": str(files / "sae_other"), "hookpoint": HOOK,
                   "features": str(files / "feats" / "moon")})  # fmt: skip
    assert tree(tmp_path) == before and not leftovers(tmp_path)


# -- the slider's page inputs ---------------------------------------------------------------------

PAGE_CASES = [
    ("steps-none", {"steps": None}, "steps"),
    ("steps-nan", {"steps": math.nan}, "steps"),
    ("steps-text", {"steps": "many"}, "steps"),
    ("steps-above-max", {"steps": 51}, "steps"),
    ("steps-fraction", {"steps": 2.5}, "steps"),
    ("seed-inf", {"seed": math.inf}, "seed"),
    ("seed-negative", {"seed": -1}, "seed"),
    ("guidance-nan", {"guidance_scale": math.nan}, "guidance_scale"),
    ("guidance-none", {"guidance_scale": None}, "guidance_scale"),
    ("guidance-huge", {"guidance_scale": 1e9}, "guidance_scale"),
    ("batch-zero", {"batch": 0}, "batch"),
    ("prompt-empty", {"prompt": "  "}, "prompt"),
    ("prompt-not-text", {"prompt": None}, "prompt"),
]
LAYER_CASES = [
    ("multiplier-nan", [("moon", math.nan)], "multiplier"),
    ("multiplier-inf", [("moon", -math.inf)], "multiplier"),
    ("multiplier-text", [("moon", "lots")], "multiplier"),
    ("multiplier-none", [("moon", None)], "multiplier"),
    ("multiplier-beyond-slider", [("moon", -101.0)], "multiplier"),
    ("concept-not-text", [(3, -5.0)], "concept"),
    ("concept-twice", [("moon", -5.0), ("Moon ", -5.0)], "concepts"),
]


@pytest.fixture(scope="module")
def studio(tiny_sd):
    from saeuron.ui import UiConfig
    from saeuron.ui.studio import Studio

    return Studio(UiConfig(device="cpu"), pipe=tiny_sd)


@pytest.mark.parametrize(("change", "names"), [c[1:] for c in PAGE_CASES],
                         ids=[c[0] for c in PAGE_CASES])  # fmt: skip
def test_page_settings_are_bounded(studio, change, names) -> None:
    from dataclasses import replace

    from saeuron.ui.studio import Settings

    with pytest.raises(ConfigError) as err:
        studio.check(replace(Settings(prompt="a moon", steps=5), **change))
    assert err.value.field == names


@pytest.mark.parametrize(("layers", "names"), [c[1:] for c in LAYER_CASES],
                         ids=[c[0] for c in LAYER_CASES])  # fmt: skip
def test_page_concepts_and_multipliers_are_bounded(studio, layers, names) -> None:
    with pytest.raises(ConfigError) as err:
        studio.check_layers(layers, "cond", 7.5)
    assert err.value.field == names
