"""The gradio components of the slider page and their wiring (:func:`build_page`).

This module imports gradio, the optional 'ui' extra, at its top: only
:func:`saeuron.ui.page.build_app` imports it, when a page is built, so the handlers in
:mod:`.page` stay testable without gradio. The functions run top to bottom in the order the
page is built: the settings it starts from, the left column (prompt, concept rows, sampling
settings), the right column (images, status), then the events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from saeuron.ui.config import MAX_GUIDANCE, MAX_SEED, MIN_GUIDANCE, UiConfig
from saeuron.ui.page import (
    DEFAULT_CONCEPT,
    DEFAULT_PROMPT,
    INTRO,
    RECIPE_INTRO,
    Outcome,
    layers_of,
    pick_concept,
    render_all,
    render_erased,
)
from saeuron.ui.studio import Layer, Session, Settings, Studio

Values = dict[Any, Any]
"""What gradio passes a handler whose inputs are a set: {component: value}."""
Handler = Callable[..., Values]


@dataclass(frozen=True)
class Start:
    """What the page starts from, read once from the studio."""

    cfg: UiConfig
    bundled: list[str]
    first: str | None
    """The concept in the first row; None leaves it empty."""
    recipe: list[str]
    """The recipe's concepts, one row each; empty without a recipe."""
    rows: int
    """Concept rows built (shown or hidden)."""

    @property
    def shown(self) -> int:
        """Concept rows visible when the page opens."""
        return max(1, len(self.recipe))


@dataclass(frozen=True)
class ConceptRows:
    """Row ``i`` of each list belongs to concept row ``i``."""

    groups: list[gr.Group]
    concepts: list[gr.Dropdown]
    sliders: list[gr.Slider]


@dataclass(frozen=True)
class Page:
    """Every component a handler reads or writes."""

    state: gr.State
    prompt: gr.Textbox
    rows: ConceptRows
    add: gr.Button
    remove: gr.Button
    steps: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    guidance_half: gr.Radio
    batch: gr.Slider
    draw: gr.Button
    unerased: gr.Image
    erased: gr.Image
    status: gr.Markdown


def start_of(studio: Studio) -> Start:
    cfg: UiConfig = studio.config
    bundled = studio.bundled_concepts()
    first = DEFAULT_CONCEPT.get(cfg.model) if cfg.sae is None else None
    first = first if first in bundled else (bundled[0] if bundled else None)
    # With a recipe, one row per concept of it, each at its tuned strength (1).
    recipe = studio.recipe_concepts()
    return Start(cfg, bundled, first, recipe, rows=max(cfg.max_concepts, len(recipe)))


def build_page(studio: Studio) -> gr.Blocks:
    """The page: the controls on the left, the two images on the right, then the events."""
    start = start_of(studio)
    with gr.Blocks(title="saeuron: the slider", analytics_enabled=False) as app:
        state = gr.State(Session(rows=start.shown))
        gr.Markdown((RECIPE_INTRO if start.recipe else INTRO).format(model=start.cfg.model))
        with gr.Row():
            page = _columns(studio, start, state)
        _wire(app, studio, page)
    return app


# -- the components, in the order they appear --------------------------------------------------


def _columns(studio: Studio, start: Start, state: gr.State) -> Page:
    cfg = start.cfg
    with gr.Column(scale=2, min_width=320):
        prompt = gr.Textbox(
            value=DEFAULT_PROMPT.get(cfg.model, "a photo of a cat on a sofa"),
            label="prompt (Enter to draw)",
            max_length=cfg.max_prompt_chars,
            lines=1,
            elem_id="prompt",
        )
        rows = _concept_rows(studio, start)
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
                                 step=0.5, label="CFG scale", elem_id="guidance")  # fmt: skip
            guidance_half = gr.Radio(
                ["cond", "both"], value="cond", label="CFG half edited", elem_id="guidance-half"
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
    return Page(state, prompt, rows, add, remove, steps, seed, guidance, guidance_half, batch, draw,
                unerased, erased, status)  # fmt: skip


def _concept_rows(studio: Studio, start: Start) -> ConceptRows:
    """All ``start.rows`` rows are built up front: gradio cannot add components later, so
    *stack another* only shows a hidden one."""
    rows = ConceptRows([], [], [])
    for i in range(start.rows):
        with gr.Group(visible=i < start.shown) as group:
            rows.concepts.append(_concept(start, i))
            slider = _strength(i) if start.recipe else _multiplier(studio, start, i)
            rows.sliders.append(slider)
        rows.groups.append(group)
    return rows


def _concept(start: Start, i: int) -> gr.Dropdown:
    if start.recipe:
        value = start.recipe[i] if i < len(start.recipe) else None
    else:
        value = start.first if i == 0 else None
    return gr.Dropdown(
        choices=start.recipe or start.bundled,
        value=value,
        # A recipe holds tuned edits for its own concepts only: no free text there.
        allow_custom_value=not start.recipe,
        label=f"concept {i + 1}",
        info="a bundled concept, or type any phrase (its features are "
        "computed on the fly, with progress)",
        elem_id=f"concept-{i}",
    )


def _strength(i: int) -> gr.Slider:
    """A recipe concept's slider: a fraction of its tuned edit."""
    return gr.Slider(
        minimum=0.0, maximum=1.0, value=1.0, step=0.05,
        label="strength: 0 off, 1 the recipe's tuned edit",
        elem_id=f"multiplier-{i}",
    )  # fmt: skip


def _multiplier(studio: Studio, start: Start, i: int) -> gr.Slider:
    """A concept's SAE multiplier; the first row starts at its concept's tuned value."""
    cfg = start.cfg
    return gr.Slider(
        minimum=-cfg.max_multiplier,
        maximum=cfg.max_multiplier,
        value=studio.default_multiplier(start.first) if i == 0 and start.first else -20.0,
        step=1,
        label="multiplier: negative erases, positive amplifies",
        elem_id=f"multiplier-{i}",
    )


# -- the events ----------------------------------------------------------------------------------


def _wire(app: gr.Blocks, studio: Studio, page: Page) -> None:
    """Anything that changes both images redraws both; a concept row redraws the erased one."""
    rows = page.rows
    # gradio injects a progress tracker into handlers that declare one as a default;
    # track_tqdm shows the free-text features' tqdm bars on the page.
    tracked = gr.Progress(track_tqdm=True)
    # A set: handlers get one {component: value} dict, so the number of concept rows
    # can vary and gradio still finds the progress parameter it injects by position.
    common = {page.state, page.prompt, page.steps, page.seed, page.guidance, page.batch,
              page.guidance_half, *rows.concepts, *rows.sliders}  # fmt: skip
    # One function object per kind of handler: gradio names the API endpoints after it.
    on_all = _on_all(studio, page, tracked)
    on_erased = _on_erased(studio, page, tracked)
    both_out = [page.unerased, page.erased, page.status, page.state]
    erased_out = [page.erased, page.status, page.state]
    # The API a script sees is two endpoints, /draw (both images) and /erase (the erased
    # one); every other event runs the same handlers and stays out of the API docs.
    hidden: dict[str, Any] = {"api_visibility": "undocumented"}
    app.load(on_all, common, both_out, **hidden)
    page.draw.click(on_all, common, both_out, trigger_mode="always_last", api_name="draw")
    for trigger in (page.prompt.submit, page.steps.change, page.seed.change,
                    page.guidance.change, page.batch.change):  # fmt: skip
        trigger(on_all, common, both_out, trigger_mode="always_last", **hidden)
    page.guidance_half.change(on_erased, common, erased_out, trigger_mode="always_last", **hidden)
    for i, (concept, slider) in enumerate(zip(rows.concepts, rows.sliders)):
        pick = _on_pick(studio, page, tracked, i)
        concept.change(pick, common, [*erased_out, slider], trigger_mode="always_last", **hidden)
        erase_api: dict[str, Any] = {"api_name": "erase"} if i == 0 else hidden
        slider.change(on_erased, common, erased_out, trigger_mode="always_last", **erase_api)
    page.add.click(_on_rows(page, +1), [page.state], [page.state, *rows.groups], **hidden)
    page.remove.click(_on_rows(page, -1), [page.state], [page.state, *rows.groups, *rows.concepts],
                      **hidden)  # fmt: skip


def _unpack(page: Page, values: Values) -> tuple[Session, Settings, list[Layer], str]:
    settings = Settings(
        prompt=values[page.prompt] or "",
        steps=values[page.steps],
        seed=values[page.seed] if values[page.seed] is not None else 0,
        guidance_scale=values[page.guidance],
        batch=values[page.batch],
    )
    names = [values[c] for c in page.rows.concepts]
    gammas = [values[s] for s in page.rows.sliders]
    session = values[page.state]
    return session, settings, layers_of(session, names, gammas), values[page.guidance_half]


def _show(page: Page, outcome: Outcome, session: Session, extra: Values | None = None) -> Values:
    """The components to update; an error goes to a toast and the status, images stay."""
    if outcome.error:
        gr.Warning(outcome.error)
        return {page.status: f"**error**: {outcome.error}", page.state: session}
    out: Values = {page.status: outcome.status, page.state: session, **(extra or {})}
    if outcome.unerased is not None:
        out[page.unerased] = outcome.unerased
    if outcome.erased is not None:
        out[page.erased] = outcome.erased
    return out


def _on_all(studio: Studio, page: Page, tracked: gr.Progress) -> Handler:
    def on_all(values: Values, progress: Any = tracked) -> Values:
        session, settings, layers, half = _unpack(page, values)
        announce(studio, layers, progress)
        return _show(page, render_all(studio, session, settings, layers, half), session)

    return on_all


def _on_erased(studio: Studio, page: Page, tracked: gr.Progress) -> Handler:
    def on_erased(values: Values, progress: Any = tracked) -> Values:
        session, settings, layers, half = _unpack(page, values)
        announce(studio, layers, progress)
        return _show(page, render_erased(studio, session, settings, layers, half), session)

    return on_erased


def _on_pick(studio: Studio, page: Page, tracked: gr.Progress, row: int) -> Handler:
    """A concept picked in ``row``: redraw, and move its slider to the concept's default."""

    def handler(values: Values, progress: Any = tracked) -> Values:
        session, settings, layers, half = _unpack(page, values)
        announce(studio, layers, progress)
        picked = values[page.rows.concepts[row]]
        outcome = pick_concept(studio, session, settings, layers, picked, half)
        extra: Values = {}
        if outcome.multiplier is not None and not outcome.error:
            extra[page.rows.sliders[row]] = outcome.multiplier
        return _show(page, outcome, session, extra)

    return handler


def _on_rows(page: Page, delta: int) -> Callable[[Session], Values]:
    """Show ``delta`` more concept rows (fewer when negative), keeping one to all of them."""
    groups, concepts = page.rows.groups, page.rows.concepts
    n = len(groups)

    def handler(session: Session) -> Values:
        session.rows = max(1, min(n, session.rows + delta))
        out: Values = {page.state: session}
        for i, group in enumerate(groups):
            out[group] = gr.update(visible=i < session.rows)
        if delta < 0 and session.rows < n:
            # The hidden row's concept is cleared; its change redraws the erased image.
            out[concepts[session.rows]] = None
        return out

    return handler


def announce(studio: Studio, layers: Sequence[Layer], progress: Any) -> None:
    """Say what the wait is for before a free-text concept's features are computed."""
    new = [c for c, _ in layers if not studio.is_cached(c)]
    if new:
        progress(0.0, desc=f"computing the features of {', '.join(map(repr, new))}")
