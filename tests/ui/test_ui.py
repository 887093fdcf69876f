"""The slider's logic without a browser: config bounds, the CLI, Studio and Session on MiniCanvas.

The page itself is driven in a real browser by ``test_ui_browser.py``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import pytest

from saeuron.cli.main import main
from saeuron.erasure.technique import DEFAULT_MULTIPLIER
from saeuron.minicanvas.world import OBJECTS, STYLES
from saeuron.ui import UiConfig
from saeuron.ui.page import pick_concept, render_all, render_erased
from saeuron.ui.studio import Session, Settings, Studio, contact_sheet
from saeuron.utils.config import ConfigError

PROMPT = "An image of moon in checkered style."
STEPS = 5


def bits(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(bits(a), bits(b))) and len(a) == len(b)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread while these tests sample: the model is tiny and gains nothing from
    two, and on a busy machine (CI, a shared box) two threads contending with other jobs made
    a 20-step image 5 to 20 times slower (0.8 s against 4 to 16 s). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def studio() -> Studio:
    studio = Studio(UiConfig(steps=STEPS, feature_images=2, device="cpu"))
    studio.warm_up()
    return studio


@pytest.fixture
def settings() -> Settings:
    return Settings(prompt=PROMPT, steps=STEPS, seed=188)


# -- config and command line -----------------------------------------------------------------


def test_config_defaults_and_bounds() -> None:
    cfg = UiConfig()
    assert (cfg.model, cfg.sae, cfg.host, cfg.port, cfg.steps) == (
        "minicanvas", None, "127.0.0.1", 7860, 20,
    )  # fmt: skip
    for bad, name in (
        (dict(port=0), "port"),
        (dict(port=70000), "port"),
        (dict(steps=0), "steps"),
        (dict(steps=60), "steps"),  # above max_steps 50
        (dict(max_batch=0), "max_batch"),
        (dict(max_concepts=0), "max_concepts"),
        (dict(max_prompt_chars=0), "max_prompt_chars"),
        (dict(max_multiplier=0.0), "max_multiplier"),
        (dict(host=" "), "host"),
        (dict(model="some/model"), "sae"),  # no SAE known for it
        (dict(device="gpu?"), "device"),
    ):
        with pytest.raises(ConfigError) as err:
            UiConfig(**bad)
        assert err.value.field == name


def test_cli_rejects_bad_flags_before_loading(capsys, monkeypatch) -> None:
    import saeuron.ui.server as server

    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("must not load anything"))
    assert main(["ui", "--port", "70000"]) == 2
    assert "port: got 70000; must be <= 65535" in capsys.readouterr().err
    assert main(["ui", "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err


def test_cli_without_gradio_names_the_extra(capsys, monkeypatch) -> None:
    import saeuron.cli.ui as ui_command
    import saeuron.ui.server as server

    monkeypatch.setattr(ui_command, "gradio_missing", lambda: True)
    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("must not load anything"))
    assert main(["ui"]) == 2
    assert "pip install 'saeuron[ui]'" in capsys.readouterr().err


# Fresh interpreters importing the whole package (13 s): in the long tier.
@pytest.mark.slow
def test_the_library_and_cli_do_not_import_gradio() -> None:
    code = (
        "import sys, saeuron, saeuron.ui, saeuron.ui.studio, saeuron.cli.main;"
        "saeuron.cli.main.build_parser(); assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Studio and Session ------------------------------------------------------------------------


def test_bundled_concepts_and_their_tuned_multipliers(studio) -> None:
    from saeuron.minicanvas.assets import load_params
    from saeuron.models.bundles import find_bundle

    assert studio.bundled_concepts() == [*OBJECTS, *STYLES]
    tuned = load_params(find_bundle("minicanvas").folder)
    assert studio.default_multiplier("moon") == tuned["moon"]["multiplier"]
    assert studio.default_multiplier(" Checkered ") == tuned["checkered"]["multiplier"]
    assert studio.default_multiplier("a red balloon") == DEFAULT_MULTIPLIER


def test_unerased_image_is_bit_identical_across_slider_moves(studio, settings) -> None:
    session = Session()
    before = session.render_unerased(studio, settings)
    kept = bits(before)
    first = session.render_erased(studio, settings, [("moon", -100.0)])
    moved = session.render_erased(studio, settings, [("moon", 40.0)])
    assert not same(first, moved), "moving the multiplier did not change the erased image"
    assert not same(first, before), "erasing moon changed nothing"
    again = session.render_unerased(studio, settings)
    assert same(again, before) and all(np.array_equal(a, b) for a, b in zip(bits(again), kept))
    # Sampled afresh after erasures: the hooks left nothing behind.
    assert same(studio.generate(settings), before)


def test_stacking_two_concepts_differs_from_one(studio, settings) -> None:
    session = Session()
    one = session.render_erased(studio, settings, [("moon", -100.0)])
    two = session.render_erased(studio, settings, [("moon", -100.0), ("checkered", -10.0)])
    style = session.render_erased(studio, settings, [("checkered", -10.0)])
    assert not same(one, two) and not same(style, two)
    # Order in the stack does not matter: objects and styles sit at different hookpoints.
    assert same(two, studio.generate(settings, [("checkered", -10.0), ("moon", -100.0)]))


def test_sessions_do_not_share_choices_or_images(studio, settings) -> None:
    a, b = Session(), Session()
    erased_a = a.render_erased(studio, settings, [("moon", -100.0)])
    erased_b = b.render_erased(studio, settings, [("moon", 60.0)])
    assert not same(erased_a, erased_b)
    assert same(a.erased, erased_a) and a.erased_key != b.erased_key


def test_concurrent_requests_do_not_leak_erasure(studio, settings) -> None:
    plain = studio.generate(settings)
    erased = studio.generate(settings, [("moon", -100.0)])
    results: dict[str, list] = {"plain": [], "erased": []}

    def work(name, layers) -> None:
        for _ in range(3):
            results[name].append(studio.generate(settings, layers))

    threads = [threading.Thread(target=work, args=("plain", [])),
               threading.Thread(target=work, args=("erased", [("moon", -100.0)]))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(same(images, plain) for images in results["plain"])
    assert all(same(images, erased) for images in results["erased"])


def test_batch_and_contact_sheet(studio, settings) -> None:
    images = studio.generate(Settings(PROMPT, STEPS, seed=188, batch=2))
    assert len(images) == 2 and same(images[:1], studio.generate(settings))
    sheet = contact_sheet(images)
    assert sheet.height == 256 and sheet.width == 2 * 256 + 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(prompt="x" * 201), "prompt"),
        (dict(prompt="   "), "prompt"),
        (dict(steps=0), "steps"),
        (dict(steps=51), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(batch=5), "batch"),
        (dict(seed=-1), "seed"),
        (dict(guidance_scale=40.0), "guidance_scale"),
    ],
)
def test_bounded_settings_name_the_field(studio, settings, change, field) -> None:
    bad = Settings(**{**settings.__dict__, **change})
    with pytest.raises(ConfigError) as err:
        studio.generate(bad)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("layers", "guidance_half", "guidance", "field"),
    [
        ([(f"c{i}", -1.0) for i in range(5)], "cond", 7.5, "concepts"),
        ([("moon", -1.0), ("Moon ", -2.0)], "cond", 7.5, "concepts"),
        ([("moon", -101.0)], "cond", 7.5, "multiplier"),
        ([("x" * 61, -1.0)], "cond", 7.5, "concept"),
        ([("moon", -1.0)], "neither", 7.5, "guidance_half"),
        ([("moon", -1.0)], "cond", 1.0, "guidance_scale"),
    ],
)
def test_bounded_stack_names_the_field(studio, layers, guidance_half, guidance, field) -> None:
    settings = Settings(PROMPT, STEPS, guidance_scale=guidance)
    with pytest.raises(ConfigError) as err:
        studio.generate(settings, layers, guidance_half=guidance_half)
    assert err.value.field == field


def test_free_text_concept_is_computed_once(studio, settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    assert not studio.is_cached("a red balloon")
    erased = studio.generate(settings, [("a red balloon", -20.0)])
    assert studio.is_cached("A red balloon ")
    features, sae, hookpoint = studio.features("a red balloon")
    assert features.concept == "a red balloon" and hookpoint == sae.meta["hookpoint"]
    assert same(studio.generate(settings, [("a red balloon", -20.0)]), erased)


# -- the page's handlers, without gradio -----------------------------------------------------


def test_handlers_report_errors_instead_of_raising(studio, settings) -> None:
    session = Session()
    bad = render_all(studio, session, Settings("x" * 500, STEPS), [], "cond")
    assert bad.error and bad.error.startswith("prompt:") and bad.unerased is None

    good = render_all(studio, session, settings, [("moon", -100.0)], "cond")
    assert good.error is None and good.unerased is not None and good.erased is not None
    assert "moon x -100" in good.status

    slid = render_erased(studio, session, settings, [("moon", 30.0)], "cond")
    assert slid.unerased is None and slid.erased is not None
    assert np.asarray(slid.erased).tolist() != np.asarray(good.erased).tolist()

    broken = render_erased(studio, session, settings, [("moon", 1.0)], "sideways")
    assert broken.error and broken.error.startswith("guidance_half:")

    picked = pick_concept(studio, session, settings, [("checkered", 5.0)], "checkered", "cond")
    assert picked.error is None and picked.multiplier == studio.default_multiplier("checkered")
    assert f"checkered x {picked.multiplier:g}" in picked.status


def test_page_builds(studio) -> None:
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio not installed: pip install 'saeuron[ui]'")
    from saeuron.ui.page import build_app

    app = build_app(studio)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"prompt", "unerased", "erased", "multiplier-0", "concept-0", "steps", "seed",
            "guidance-half", "batch", "status"} <= ids  # fmt: skip
