"""The gradio page of ``saeuron ui``; all the logic is in :mod:`.studio`.

The handlers are plain functions of (studio, session, values) returning what to show, so
they are tested without a browser; :func:`build_app` (built in :mod:`.layout`) only wires
them to components. Every handler reports a bad value or a failure in the status box and a
toast, and leaves the images as they were: an error never ends the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from saeuron.ui.config import UiConfig
from saeuron.ui.studio import Layer, Session, Settings, Studio, contact_sheet
from saeuron.utils.errors import ConfigError, UserError

if TYPE_CHECKING:
    import gradio as gr

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = {"minicanvas": "An image of moon in checkered style."}
DEFAULT_CONCEPT = {"minicanvas": "moon"}

INTRO = """\
# saeuron: the slider
Erase a concept from **{model}** while it samples, by editing sparse-autoencoder latents
in its UNet (SAeUron). Pick a concept (or type any phrase: its features are computed on the
fly), move its multiplier: **negative erases, positive amplifies**. Stack more concepts with
*stack another*. Moving a slider redraws only the image on the right.
"""


RECIPE_INTRO = """\
# saeuron: the slider
Erase concepts from **{model}** with an erasure recipe: each concept's tuned edits (in the
text encoder and/or the denoiser's blocks). One slider per concept: **0 is off, 1 is the
tuned strength**. Moving a slider redraws only the image on the right.
"""


@dataclass
class Outcome:
    """What a handler shows: images (None: leave as they are) and the status line."""

    unerased: Image.Image | None = None
    erased: Image.Image | None = None
    status: str = ""
    error: str | None = None
    multiplier: float | None = None
    """A new value for the concept row's slider (when a concept was picked)."""


def layers_of(session: Session, concepts: Sequence[Any], multipliers: Sequence[Any]) -> list[Layer]:
    """The visible concept rows as (concept, multiplier) pairs."""
    rows = list(zip(concepts, multipliers))[: session.rows]
    # Values are passed on as the browser sent them: Studio.check_layers names a bad one.
    return [(str(c), m) for c, m in rows if c]


def _status(session: Session, layers: Sequence[Layer], what: Sequence[str]) -> str:
    timing = ", ".join(f"{n} {session.last[n]:.2f} s" for n in what if n in session.last)
    stack = ", ".join(f"{c} x {m:g}" for c, m in layers) or "nothing (same as left)"
    return f"erased: {stack}. Time to sample: {timing}."


def _guard(fn: Callable[[], Outcome]) -> Outcome:
    try:
        return fn()
    except UserError as err:  # bad input, a missing file, a run that went non-finite
        return Outcome(error=str(err))
    except Exception as err:  # the page must outlive any one request
        logger.exception("request failed")
        return Outcome(error=f"internal error ({type(err).__name__}): {err}")


def render_all(
    studio: Studio,
    session: Session,
    settings: Settings,
    layers: Sequence[Layer],
    guidance_half: str,
) -> Outcome:
    """Both images: after a change of prompt, steps, seed, guidance or batch."""

    def run() -> Outcome:
        before = session.render_unerased(studio, settings)
        after = session.render_erased(studio, settings, layers, guidance_half)
        clean = studio.check_layers(layers, guidance_half, settings.guidance_scale)
        return Outcome(
            unerased=contact_sheet(before),
            erased=contact_sheet(after),
            status=_status(session, clean, ("unerased", "erased")),
        )

    return _guard(run)


def render_erased(
    studio: Studio,
    session: Session,
    settings: Settings,
    layers: Sequence[Layer],
    guidance_half: str,
) -> Outcome:
    """Only the erased image: after a slider, a concept or the CFG half moved."""

    def run() -> Outcome:
        after = session.render_erased(studio, settings, layers, guidance_half)
        clean = studio.check_layers(layers, guidance_half, settings.guidance_scale)
        return Outcome(erased=contact_sheet(after), status=_status(session, clean, ("erased",)))

    return _guard(run)


def pick_concept(
    studio: Studio,
    session: Session,
    settings: Settings,
    layers: list[Layer],
    concept: str | None,
    guidance_half: str,
) -> Outcome:
    """``concept`` chosen in a row: its slider goes to the concept's tuned multiplier."""

    def run() -> Outcome:
        multiplier = studio.default_multiplier(concept) if concept else None
        rows = list(layers)
        if concept and multiplier is not None:
            name = concept.strip().lower()
            # The picked row is among the layers (by name): draw it at its new default.
            rows = [(c, multiplier) if c.strip().lower() == name else (c, m) for c, m in rows]
        outcome = render_erased(studio, session, settings, rows, guidance_half)
        outcome.multiplier = multiplier
        return outcome

    return _guard(run)


# -- the page --------------------------------------------------------------------------------


def build_app(studio: Studio) -> gr.Blocks:
    """The slider page for ``studio``, not yet launched; see :mod:`.layout`."""
    # gradio is the optional 'ui' extra, and .layout imports it: imported when a page is
    # built, never on import, so the handlers above are tested without gradio.
    from saeuron.ui.layout import build_page

    return build_page(studio)


def launch(app: gr.Blocks, cfg: UiConfig, block: bool = True) -> None:
    import gradio as gr  # the optional 'ui' extra, as in build_app

    # One request at a time: the erase hooks sit on the one shared pipeline while it samples.
    app.queue(default_concurrency_limit=1, max_size=cfg.queue_size)
    # System fonts only: the default theme fetches web fonts, and the page must work offline.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    try:
        app.launch(
            server_name=cfg.host,
            server_port=cfg.port,
            prevent_thread_lock=True,
            ssr_mode=False,
            show_error=True,
            theme=theme,
            quiet=True,
        )
    except OSError as err:
        # The address was free when checked; another program took it while the model loaded.
        raise ConfigError("port", f"cannot serve on {cfg.host}:{cfg.port}: {err}") from None
    # Said once the server listens, never before: the address is known to work.
    logger.info("serving on http://%s:%d", cfg.host, cfg.port)
    if block:
        app.block_thread()
