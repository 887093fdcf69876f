"""The slider in a real browser: a ``saeuron ui`` server, headless Chromium driven by Playwright.

Needs gradio (``pip install 'saeuron[ui]'``), Playwright (``pip install playwright``) and a
Chromium (``apt-get install chromium``; Playwright's own download also works). What is
missing is named in the skip reason and in a warning, so it never skips silently.

The screenshot goes to ``artifacts/ui.png`` (and pytest's tmp path). To refresh the README's
picture: ``SAEURON_UI_SCREENSHOT=docs/ui.png SAEURON_UI_STEPS=20 python -m pytest -q
tests/ui/test_browser.py``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_MS = 30_000


def _missing(message: str) -> None:
    # A warning as well as the skip: pytest -q lists warnings but not skip reasons.
    warnings.warn(f"browser test skipped: {message}", stacklevel=2)
    pytest.skip(message)


def _chromium() -> str | None:
    override = os.environ.get("SAEURON_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"saeuron ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    tail = log.read_text()[-3000:]
    pytest.fail(f"saeuron ui did not answer at {url} in {timeout:.0f} s:\n{tail}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if importlib.util.find_spec("gradio") is None:
        _missing("gradio not installed: pip install 'saeuron[ui]'")
    if importlib.util.find_spec("playwright") is None:
        _missing("playwright not installed: pip install playwright")
    if _chromium() is None:
        _missing("no chromium: apt-get install chromium (or set SAEURON_CHROMIUM)")
    folder = tmp_path_factory.mktemp("ui")
    port = _free_port()
    log = folder / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "SAEURON_CACHE": str(folder / "cache"),
    }
    # The tiny model gains nothing from a second thread, and on a busy machine two threads
    # contending with other jobs make each image 5 to 20 times slower; override to measure.
    env.setdefault("OMP_NUM_THREADS", "1")
    steps = os.environ.get("SAEURON_UI_STEPS", "6")
    command = [sys.executable, "-m", "saeuron", "ui", "--port", str(port), "--steps", steps]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_up(url, proc, log)
        yield url, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _src(page, elem: str) -> str:
    return page.get_attribute(f"#{elem} img", "src") or ""


def _pixels(page, elem: str):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import Error as PlaywrightError

    # The server may replace the image while it is fetched (the request then aborts): read
    # the current src again and retry, a few times.
    for attempt in range(3):
        try:
            body = page.request.get(_src(page, elem)).body()
            break
        except PlaywrightError:
            if attempt == 2:
                raise
            time.sleep(1.0)
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _wait_new(page, elem: str, old: str) -> float:
    """Seconds until the image ``elem`` shows something other than ``old``."""
    start = time.perf_counter()
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel);"
        " return i && i.getAttribute('src') && i.getAttribute('src') !== old; }",
        arg=[f"#{elem} img", old],
        timeout=TIMEOUT_MS,
    )
    return time.perf_counter() - start


def _status(page, text: str, how: str) -> None:
    page.wait_for_function(
        f"(t) => (document.querySelector('#status')?.innerText ?? '').{how}(t)",
        arg=text,
        timeout=TIMEOUT_MS,
    )


def _status_has(page, text: str) -> None:
    _status(page, text, "includes")


def _status_starts(page, text: str) -> None:
    _status(page, text, "startsWith")


def _open(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 980})
    page = context.new_page()
    return context, page


def _loaded(page, url: str) -> None:
    page.goto(url)
    for elem in ("unerased", "erased"):
        page.wait_for_selector(f"#{elem} img", timeout=TIMEOUT_MS)
    _status_has(page, "erased:")


def test_slider_in_a_browser(server, tmp_path):
    import numpy as np
    from playwright.sync_api import sync_playwright

    url, proc, log = server
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            context, page = _open(browser)
            _loaded(page, url)
            first_unerased, first_erased = _src(page, "unerased"), _src(page, "erased")
            before_pixels = _pixels(page, "unerased")
            erased_pixels = _pixels(page, "erased")
            number = page.locator("#multiplier-0 input[type=number]")
            assert float(number.input_value()) == -100.0  # moon's tuned multiplier

            # Move the slider with the mouse, three quarters of the way (about +50).
            track = page.locator("#multiplier-0 input[type=range]")
            box = track.bounding_box()
            track.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})
            seconds = _wait_new(page, "erased", first_erased)
            print(f"slider moved: erased image redrawn in the browser after {seconds:.2f} s")
            assert float(number.input_value()) > 0
            moved = _pixels(page, "erased")
            assert moved.shape == erased_pixels.shape
            assert not np.array_equal(moved, erased_pixels), "the erased image did not change"
            assert _src(page, "unerased") == first_unerased, "the unerased image was redrawn"
            assert np.array_equal(_pixels(page, "unerased"), before_pixels)

            # Back to the tuned value: the first erased image again, bit for bit.
            page.click("#multiplier-0 button[data-testid=reset-button]")
            _wait_new(page, "erased", _src(page, "erased"))
            assert float(number.input_value()) == -100.0
            assert np.array_equal(_pixels(page, "erased"), erased_pixels)

            # Stack a style on the object: the erased image changes again.
            single = _src(page, "erased")
            page.click("#add")
            second = page.locator("#concept-1 input")
            second.wait_for(state="visible", timeout=TIMEOUT_MS)
            second.click()
            page.get_by_role("option", name="checkered", exact=True).click()
            _wait_new(page, "erased", single)
            _status_has(page, "checkered")
            stacked = _pixels(page, "erased")
            assert not np.array_equal(stacked, erased_pixels), "stacking a concept changed nothing"
            assert _src(page, "unerased") == first_unerased

            # A second browser starts from the defaults, not from the first one's choices.
            other_context, other = _open(browser)
            _loaded(other, url)
            assert float(other.locator("#multiplier-0 input[type=number]").input_value()) == -100
            assert not other.locator("#concept-1 input").is_visible()
            assert np.array_equal(_pixels(other, "erased"), erased_pixels)
            assert np.array_equal(_pixels(page, "erased"), stacked)
            other_context.close()

            shot = tmp_path / "ui.png"
            page.screenshot(path=str(shot), full_page=True)
            targets = [ROOT / "artifacts" / "ui.png"]
            if os.environ.get("SAEURON_UI_SCREENSHOT"):
                targets.append(ROOT / os.environ["SAEURON_UI_SCREENSHOT"])
            for target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, target)

            # A bad value is reported on the page and the server lives on.
            guidance = page.locator("#guidance input[type=number]")
            guidance.fill("1")
            guidance.press("Enter")
            _status_has(page, "guidance_scale")
            assert page.get_by_text("must be > 1 when guidance_half is 'cond'").first.is_visible()
            assert proc.poll() is None
            guidance.fill("7.5")
            guidance.press("Enter")
            _status_starts(page, "erased:")
            assert np.array_equal(_pixels(page, "erased"), stacked)

            # Free text: its features are computed on the fly, with progress on the page.
            free = page.locator("#concept-1 input")
            free.fill("red balloon")
            free.press("Enter")
            page.wait_for_function(
                "() => document.body.innerText.includes('stats red balloon')", timeout=TIMEOUT_MS
            )
            _status_has(page, "red balloon x -20")
            assert not np.array_equal(_pixels(page, "erased"), stacked)
            assert _src(page, "unerased") == first_unerased

            context.close()
        finally:
            browser.close()
    assert proc.poll() is None, log.read_text()[-3000:]
