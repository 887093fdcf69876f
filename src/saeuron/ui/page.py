"""The gradio page of ``saeuron ui``; all the logic is in :mod:`.studio`.

The handlers are plain functions of (studio, session, values) returning what to show, so
they are tested without a browser; :func:`build_app` only wires them to components. Every
handler reports a bad value or a failure in the status box and a toast, and leaves the
images as they were: an error never ends the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from saeuron.ui.config import MAX_GUIDANCE, MAX_SEED, MIN_GUIDANCE, UiConfig
from saeuron.ui.studio import Layer, Session, Settings, Studio, contact_sheet
from saeuron.utils.errors import ConfigError, UserError

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
    cfg_half: str,
) -> Outcome:
    """Both images: after a change of prompt, steps, seed, guidance or batch."""

    def run() -> Outcome:
        before = session.render_unerased(studio, settings)
        after = session.render_erased(studio, settings, layers, cfg_half)
        clean = studio.check_layers(layers, cfg_half, settings.guidance_scale)
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
    cfg_half: str,
) -> Outcome:
    """Only the erased image: after a slider, a concept or the CFG half moved."""

    def run() -> Outcome:
        after = session.render_erased(studio, settings, layers, cfg_half)
        clean = studio.check_layers(layers, cfg_half, settings.guidance_scale)
        return Outcome(erased=contact_sheet(after), status=_status(session, clean, ("erased",)))

    return _guard(run)


def pick_concept(
    studio: Studio,
    session: Session,
    settings: Settings,
    layers: list[Layer],
    concept: str | None,
    cfg_half: str,
) -> Outcome:
    """``concept`` chosen in a row: its slider goes to the concept's tuned multiplier."""

    def run() -> Outcome:
        multiplier = studio.default_multiplier(concept) if concept else None
        rows = list(layers)
        if concept and multiplier is not None:
            name = concept.strip().lower()
            # The picked row is among the layers (by name): draw it at its new default.
            rows = [(c, multiplier) if c.strip().lower() == name else (c, m) for c, m in rows]
        outcome = render_erased(studio, session, settings, rows, cfg_half)
        outcome.multiplier = multiplier
        return outcome

    return _guard(run)


# -- the page --------------------------------------------------------------------------------


def build_app(studio: Studio) -> Any:
    # gradio is the optional 'ui' extra: imported when a page is built, never on import.
    import gradio as gr

    cfg: UiConfig = studio.config
    model = cfg.model
    bundled = studio.bundled_concepts()
    first = DEFAULT_CONCEPT.get(model) if cfg.sae is None else None
    first = first if first in bundled else (bundled[0] if bundled else None)
    # With a recipe, one row per concept of it, each at its tuned strength (1).
    recipe = studio.recipe_concepts()
    rows = max(cfg.max_concepts, len(recipe))

    with gr.Blocks(title="saeuron: the slider", analytics_enabled=False) as app:
        state = gr.State(Session(rows=max(1, len(recipe))))
        gr.Markdown((RECIPE_INTRO if recipe else INTRO).format(model=model))
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(
                    value=DEFAULT_PROMPT.get(model, "a photo of a cat on a sofa"),
                    label="prompt (Enter to draw)",
                    max_length=cfg.max_prompt_chars,
                    lines=1,
                    elem_id="prompt",
                )
                groups, concepts, sliders = [], [], []
                for i in range(rows):
                    with gr.Group(visible=i < max(1, len(recipe))) as group:
                        concepts.append(
                            gr.Dropdown(
                                choices=recipe or bundled,
                                value=(recipe[i] if i < len(recipe) else None) if recipe
                                else first if i == 0 else None,
                                allow_custom_value=not recipe,
                                label=f"concept {i + 1}",
                                info="a bundled concept, or type any phrase (its features are "
                                "computed on the fly, with progress)",
                                elem_id=f"concept-{i}",
                            )
                        )
                        sliders.append(
                            gr.Slider(
                                minimum=0.0, maximum=1.0, value=1.0, step=0.05,
                                label="strength: 0 off, 1 the recipe's tuned edit",
                                elem_id=f"multiplier-{i}",
                            ) if recipe else gr.Slider(
                                minimum=-cfg.max_multiplier,
                                maximum=cfg.max_multiplier,
                                value=studio.default_multiplier(first) if i == 0 and first
                                else -20.0,
                                step=1,
                                label="multiplier: negative erases, positive amplifies",
                                elem_id=f"multiplier-{i}",
                            )
                        )  # fmt: skip
                    groups.append(group)
                with gr.Row():
                    add = gr.Button("stack another concept", size="sm", elem_id="add")
                    remove = gr.Button("remove the last", size="sm", elem_id="remove")
                with gr.Row():
                    steps = gr.Slider(1, cfg.max_steps, value=cfg.steps, step=1, label="steps",
                                      elem_id="steps")  # fmt: skip
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                     label="seed", elem_id="seed")  # fmt: skip
                with gr.Row():
                    guidance = gr.Slider(MIN_GUIDANCE, MAX_GUIDANCE, value=cfg.guidance_scale,
                                         step=0.5, label="CFG scale",
                                         elem_id="guidance")  # fmt: skip
                    cfg_half = gr.Radio(
                        ["cond", "both"], value="cond", label="CFG half edited", elem_id="cfg-half"
                    )
                batch = gr.Slider(1, cfg.max_batch, value=1, step=1, label="images",
                                  elem_id="batch")  # fmt: skip
                draw = gr.Button("draw", variant="primary", elem_id="draw")
            with gr.Column(scale=3):
                with gr.Row():
                    unerased = gr.Image(label="without erasure", type="pil", format="png",
                                        interactive=False, elem_id="unerased")  # fmt: skip
                    erased = gr.Image(label="with erasure", type="pil", format="png",
                                      interactive=False, elem_id="erased")  # fmt: skip
                status = gr.Markdown(elem_id="status")

        n = rows
        # gradio injects a progress tracker into handlers that declare one as a default;
        # track_tqdm shows the free-text features' tqdm bars on the page.
        tracked = gr.Progress(track_tqdm=True)
        # A set: handlers get one {component: value} dict, so the number of concept rows
        # can vary and gradio still finds the progress parameter it injects by position.
        common = {state, prompt, steps, seed, guidance, batch, cfg_half, *concepts, *sliders}

        def unpack(values: dict[Any, Any]) -> tuple[Session, Settings, list[Layer], str]:
            settings = Settings(
                prompt=values[prompt] or "",
                steps=values[steps],
                seed=values[seed] if values[seed] is not None else 0,
                guidance_scale=values[guidance],
                batch=values[batch],
            )
            names = [values[c] for c in concepts]
            gammas = [values[s] for s in sliders]
            session = values[state]
            return session, settings, layers_of(session, names, gammas), values[cfg_half]

        def show(
            outcome: Outcome, session: Session, extra: dict[Any, Any] | None = None
        ) -> dict[Any, Any]:
            if outcome.error:
                gr.Warning(outcome.error)
                return {status: f"**error**: {outcome.error}", state: session}
            out: dict[Any, Any] = {status: outcome.status, state: session, **(extra or {})}
            if outcome.unerased is not None:
                out[unerased] = outcome.unerased
            if outcome.erased is not None:
                out[erased] = outcome.erased
            return out

        def on_all(values: dict[Any, Any], progress: Any = tracked) -> dict:
            session, settings, layers, half = unpack(values)
            _announce(studio, layers, progress)
            return show(render_all(studio, session, settings, layers, half), session)

        def on_erased(values: dict[Any, Any], progress: Any = tracked) -> dict:
            session, settings, layers, half = unpack(values)
            _announce(studio, layers, progress)
            return show(render_erased(studio, session, settings, layers, half), session)

        def on_pick(row: int) -> Callable[..., dict]:
            def handler(values: dict[Any, Any], progress: Any = tracked) -> dict:
                session, settings, layers, half = unpack(values)
                _announce(studio, layers, progress)
                picked = values[concepts[row]]
                outcome = pick_concept(studio, session, settings, layers, picked, half)
                extra = {}
                if outcome.multiplier is not None and not outcome.error:
                    extra[sliders[row]] = outcome.multiplier
                return show(outcome, session, extra)

            return handler

        def on_rows(delta: int) -> Callable[..., dict]:
            def handler(session: Session) -> dict:
                session.rows = max(1, min(n, session.rows + delta))
                out: dict[Any, Any] = {state: session}
                for i, group in enumerate(groups):
                    out[group] = gr.update(visible=i < session.rows)
                if delta < 0 and session.rows < n:
                    # The hidden row's concept is cleared; its change redraws the erased image.
                    out[concepts[session.rows]] = None
                return out

            return handler

        both_out = [unerased, erased, status, state]
        erased_out = [erased, status, state]
        app.load(on_all, common, both_out)
        for trigger in (prompt.submit, draw.click, steps.change, seed.change, guidance.change,
                        batch.change):  # fmt: skip
            trigger(on_all, common, both_out, trigger_mode="always_last")
        cfg_half.change(on_erased, common, erased_out, trigger_mode="always_last")
        for i, (concept, slider) in enumerate(zip(concepts, sliders)):
            concept.change(on_pick(i), common, [*erased_out, slider], trigger_mode="always_last")
            slider.change(on_erased, common, erased_out, trigger_mode="always_last")
        add.click(on_rows(+1), [state], [state, *groups])
        remove.click(on_rows(-1), [state], [state, *groups, *concepts])
    return app


def _announce(studio: Studio, layers: Sequence[Layer], progress: Any) -> None:
    """Say what the wait is for before a free-text concept's features are computed."""
    new = [c for c, _ in layers if not studio.is_cached(c)]
    if new:
        progress(0.0, desc=f"computing the features of {', '.join(map(repr, new))}")


def launch(app: Any, cfg: UiConfig, block: bool = True) -> None:
    import gradio as gr  # the optional 'ui' extra, as in build_app

    # One request at a time: the erase hooks sit on the one shared pipeline while it samples.
    app.queue(default_concurrency_limit=1, max_size=64)
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
