"""``saeuron ui`` under load, through the gradio client as a script would use the page: eight
users at once each get the images their own slider asks for, a full queue refuses instead of
growing, and values sent to the API directly are refused by name. (Peak memory against the
number of users is measured by ``benchmarks/ui_load.py``.)"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from saeuron.ui.config import UiConfig
from saeuron.ui.page import build_app, launch
from saeuron.ui.studio import Settings, Studio, contact_sheet

client_module = pytest.importorskip("gradio_client")
# Three servers and a dozen requests: about a minute on 2 cores, so the slow tier.
pytestmark = pytest.mark.slow

STEPS = 3
PROMPT = "An image of moon in checkered style."
USERS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(**options: Any) -> tuple[Studio, Any, str]:
    cfg = UiConfig(steps=STEPS, feature_images=2, device="cpu", port=_free_port(), **options)
    studio = Studio(cfg)
    studio.warm_up()
    app = build_app(studio)
    launch(app, cfg, block=False)
    return studio, app, f"http://127.0.0.1:{cfg.port}/"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Studio, str]]:
    studio, app, url = _serve()
    yield studio, url
    app.close()


def _args(
    concept: Any, multiplier: Any, steps: Any = STEPS, seed: int = 188, rows: int = 4
) -> list[Any]:
    # The page's inputs in order: prompt, its (concept, multiplier) rows (4, or one per
    # concept of a recipe), steps, seed, guidance, the CFG half edited and the number of images.
    unused = -20.0 if rows == 4 else 1.0
    rows_ = [concept, multiplier] + [None, unused] * (rows - 1)
    return [PROMPT, *rows_, steps, seed, 7.5, "cond", 1]


def _erase(url: str, *args: Any) -> tuple[np.ndarray | None, str]:
    client = client_module.Client(url, verbose=False)
    image, status = client.predict(*args, api_name="/erase")
    pixels = np.asarray(Image.open(image).convert("RGB")) if image else None
    return pixels, str(status)


def test_eight_users_each_get_their_own_sliders_images(served) -> None:
    studio, url = served
    multipliers = [0.0, -1.0, -3.0, -5.0, -10.0, -20.0, -40.0, -80.0][:USERS]
    with ThreadPoolExecutor(USERS) as pool:
        got = list(pool.map(lambda m: _erase(url, *_args("moon", m)), multipliers))
    settings = Settings(prompt=PROMPT, steps=STEPS, seed=188)
    for (pixels, status), m in zip(got, multipliers, strict=True):
        assert "error" not in status, status
        want = contact_sheet(studio.generate(settings, [("moon", m)]))
        assert np.array_equal(pixels, np.asarray(want.convert("RGB"))), m
    # The sliders asked for different erasures, and got them.
    assert len({p.tobytes() for p, _ in got}) >= USERS - 1


def _erase_raw(url: str, *args: Any) -> tuple[bool, str]:
    """The /erase endpoint called over plain HTTP, as any script may: gradio's client will
    not send NaN (it is not JSON), Python's json module will. Returns (image sent?, status)."""
    body = json.dumps({"data": list(args)})  # NaN goes out as the bare token NaN
    with httpx.Client(base_url=url, timeout=120) as http:
        posted = http.post("gradio_api/call/erase", content=body,
                           headers={"Content-Type": "application/json"})  # fmt: skip
        posted.raise_for_status()
        event = posted.json()["event_id"]
        stream = http.get(f"gradio_api/call/erase/{event}").text
    kind = [line[7:] for line in stream.splitlines() if line.startswith("event: ")][-1]
    data = [line[6:] for line in stream.splitlines() if line.startswith("data: ")][-1]
    if kind != "complete":
        return False, f"refused: {data}"
    image, status = json.loads(data)[:2]
    # A refusal leaves the image as it was: no new file (gradio sends a no-change marker).
    return isinstance(image, dict) and "path" in image, str(status)


@pytest.mark.parametrize(
    ("concept", "multiplier", "steps", "field"),
    [
        ("moon", math.nan, STEPS, "multiplier"),
        ("moon", 1e9, STEPS, "multiplier"),
        ("moon", -5.0, 10_000, "steps"),
        ("x" * 500, -5.0, STEPS, "concept"),
    ],
)
def test_values_sent_to_the_api_directly_are_refused(served, concept, multiplier, steps, field):
    _, url = served
    sent, status = _erase_raw(url, *_args(concept, multiplier, steps))
    assert not sent, status
    if status.startswith("refused"):
        # gradio's own range check of the slider refuses before the handler, naming the bound.
        assert "maximum value" in status or "minimum value" in status, status
    else:
        assert status.startswith("**error**") and field in status, status


def test_a_full_queue_refuses_and_the_server_goes_on() -> None:
    studio, app, url = _serve(queue_size=1, max_steps=200)
    try:
        with ThreadPoolExecutor(6) as pool:
            jobs = [pool.submit(_erase, url, *_args("moon", -5.0 - i, steps=60)) for i in range(6)]
            outcomes = []
            for job in jobs:
                try:
                    outcomes.append(job.result()[1])
                except (client_module.exceptions.AppError, client_module.utils.QueueError) as err:
                    outcomes.append(f"refused: {err}")
        refused = [o for o in outcomes if o.startswith("refused")]
        assert refused and all("queue" in o.lower() for o in refused), outcomes
        assert len(refused) < len(outcomes), outcomes
        # Once the queue drains, the next request is served.
        _, status = _erase(url, *_args("moon", -5.0))
        assert "error" not in status, status
    finally:
        app.close()


def test_with_a_recipe_a_concept_it_does_not_hold_is_refused() -> None:
    # With a recipe the sliders are its concepts: any other name sent to the API is refused
    # (the page's own menu offers no other), and the server goes on.
    studio, app, url = _serve(recipe="bundled")
    rows = len(studio.recipe_concepts())
    try:
        sent, status = _erase_raw(url, *_args("zebra", 1.0, rows=rows))
        assert not sent and status.startswith(("refused", "**error**")), status
        assert "zebra" in status, status
        sent, status = _erase_raw(url, *_args("moon", 1.0, rows=rows))
        assert sent and "error" not in status, status
    finally:
        app.close()
