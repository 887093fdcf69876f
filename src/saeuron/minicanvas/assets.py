"""MiniCanvas' shipped SAEs, concept statistics and features, built with the project's tools.

Layout inside the bundle folder (described by its ``bundle.json``, see
:mod:`saeuron.models.bundles`)::

    bundle.json                                          defaults, concepts, where things are
    saes/<hookpoint>/{cfg.json, sae.safetensors, saeuron.json}
    stats/<hookpoint>/<concept>.{safetensors,json}       per-step concept statistics
    features/<hookpoint>/<concept>.{safetensors,json}    what erase() uses
    params.json                                          per-concept tau and multiplier
    supervised/saes/<hookpoint>/...                      SAEmnesia's supervised SAEs

Objects are read at ``up_blocks.1.attentions.1`` and styles at ``.2``, the roles these
blocks play in Stable Diffusion according to SAeUron.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.minicanvas.assets_config import (
    GUIDANCE_SCALE,
    NAME,
    NUM_INFERENCE_STEPS,
    AssetConfig,
)
from saeuron.minicanvas.world import (
    OBJECTS,
    STYLES,
    TEST_TEMPLATES,
    anchor_prompts,
    concept_kind,
)
from saeuron.models.bundles import (
    Bundle,
    BundleConcept,
    bundle_card,
    writable_folder,
)
from saeuron.models.pipelines import load_pipeline
from saeuron.models.resolve import ModelArg, ResolvedModel, resolve_model
from saeuron.sae import Sae, SaeConfig
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.trainer import STATE_DIR, TrainConfig, train_sae
from saeuron.utils.cards import write_card as write_card_file
from saeuron.utils.config import Config
from saeuron.utils.files import (
    ASSETS_SUMMARY,
    BUNDLE,
    BUNDLE_CLASSIFIER_DIR,
    BUNDLE_FEATURES_DIR,
    BUNDLE_SAES_DIR,
    BUNDLE_STATS_DIR,
    BUNDLE_SUPERVISED_DIR,
    PARAMS,
    SAE_META,
    SUPERVISED_FEATURES_DIR,
    TRAIN_LOG,
)
from saeuron.utils.io import atomic_write_json, make_json_portable, read_json_or_empty

logger = logging.getLogger(__name__)

# AssetConfig with the bundle's name and sampling defaults, and concept_kind, live in
# torch-free modules that --help reads; they stay importable from here.

OBJECT_HOOKPOINT = "unet.up_blocks.1.attentions.1"
STYLE_HOOKPOINT = "unet.up_blocks.1.attentions.2"
PARAMS_FILE = PARAMS
SUPERVISED_SAES = f"{BUNDLE_SUPERVISED_DIR}/{BUNDLE_SAES_DIR}"
DEFAULT_SUPERVISED_MULTIPLIER = -5.0
# Before tuning: the paper's style setting (one latent, gamma -1) and a middling object one.
DEFAULT_PARAMS = {
    "style": {"tau": 1, "multiplier": -1.0},
    "object": {"tau": 1, "multiplier": -10.0},
}


def concept_hookpoint(concept: str) -> str:
    return OBJECT_HOOKPOINT if concept_kind(concept) == "object" else STYLE_HOOKPOINT


def concept_prompts(concept: str) -> list[str]:
    """Anchor prompts that show ``concept`` (its statistics' prompt set)."""
    kind = concept_kind(concept)
    index = (OBJECTS if kind == "object" else STYLES).index(concept)
    return [
        prompt
        for prompt, obj, style in anchor_prompts()
        if (obj if kind == "object" else style) == index
    ]


def load_params(folder: Path) -> dict[str, dict[str, Any]]:
    tuned = read_json_or_empty(folder / PARAMS_FILE)
    params = {}
    for concept in (*OBJECTS, *STYLES):
        params[concept] = {**DEFAULT_PARAMS[concept_kind(concept)], **tuned.get(concept, {})}
    return params


def bundle_folder(model: ResolvedModel, out: str | None = None) -> Path:
    """The folder a MiniCanvas bundle lives in: ``out``, the bundle ``model`` names, or
    ``model`` itself as a folder."""
    if out:
        return Path(out)
    return Path(model.source)


def writable_bundle_folder(model: ResolvedModel, out: str | None = None) -> Path:
    """Where a command that changes a bundle writes: ``out``, the bundle ``model`` names (for
    a bundle shipped in the package, the user's copy of it: nothing is written into the
    package), or ``model`` itself as a folder."""
    if out:
        return Path(out)
    bundle = model.bundle
    return writable_folder(bundle) if bundle is not None else Path(model.name)


def minicanvas_bundle(folder: Path) -> Bundle:
    """The description of a MiniCanvas bundle in ``folder`` (what ``bundle.json`` holds)."""
    concepts = {c: BundleConcept("object", OBJECT_HOOKPOINT) for c in OBJECTS}
    concepts.update({c: BundleConcept("style", STYLE_HOOKPOINT) for c in STYLES})
    return Bundle(
        name=NAME,
        folder=folder,
        num_inference_steps=NUM_INFERENCE_STEPS,
        guidance_scale=GUIDANCE_SCALE,
        default_hookpoint=OBJECT_HOOKPOINT,
        saes=BUNDLE_SAES_DIR,
        features=BUNDLE_FEATURES_DIR,
        stats=BUNDLE_STATS_DIR,
        supervised=SUPERVISED_SAES,
        classifier=BUNDLE_CLASSIFIER_DIR,
        concepts=concepts,
        default_prompt=TEST_TEMPLATES[0].format(object="moon", style="checkered"),
        default_concept="moon",
        description=DESCRIPTION,
        license="mit",
    )


DESCRIPTION = (
    "MiniCanvas 2, the small text-to-image model saeuron ships so that SAeUron runs, is "
    "measured and can be seen on a laptop CPU: a stock diffusers `StableDiffusionPipeline` "
    "(an `AutoencoderTiny`, a UNet with Stable Diffusion's block layout at a small scale, a "
    "small CLIP text model with the real CLIP tokenizer, DDIM) trained on a procedural world "
    "like UnlearnCanvas: 10 objects x 10 styles, 32x32 pixels, three names per concept "
    "(canonical, validation, test-only) and two-object scenes. With it: SAEs at "
    "`unet.up_blocks.1.attentions.1` (objects) and `.2` (styles), every concept's statistics "
    "and tuned features, SAEmnesia's supervised SAEs, the text-encoder and guidance-site SAEs "
    "of the recipes, a recipe per concept, and the classifier that judges erasures (object, "
    "style and scene heads). The model was fine-tuned from MiniCanvas 1 (trained from seed 0) "
    "with `saeuron minicanvas train --init-from`; the rest was made from seed 0 with "
    "`scripts/minicanvas_build.sh`."
)


def write_card(folder: Path, repo_id: str | None = None) -> Path:
    """The bundle's model card (README.md), from what the folder holds."""
    return write_card_file(folder, bundle_card(Bundle.read(folder), repo_id=repo_id))


def classifier_folder(model: ModelArg = NAME) -> Path:
    """The MiniCanvas classifier of a bundle (the shipped one by default)."""
    folder = bundle_folder(resolve_model(model)) / BUNDLE_CLASSIFIER_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"no MiniCanvas classifier at {folder}")
    return folder


def write_bundle(folder: Path) -> Path:
    path = atomic_write_json(folder / BUNDLE, minicanvas_bundle(folder).to_dict())
    write_card(folder)
    return path


def supervised_features_path(folder: Path, concept: str) -> Path:
    """SAEmnesia's one-latent features of ``concept`` (path without suffix)."""
    hookpoint = concept_hookpoint(concept)
    return folder / SUPERVISED_SAES / hookpoint / SUPERVISED_FEATURES_DIR / concept


def load_supervised_params(folder: Path) -> dict[str, dict[str, float]]:
    tuned = read_json_or_empty(folder / BUNDLE_SUPERVISED_DIR / PARAMS)
    return {
        c: {
            "multiplier": float(
                tuned.get(c, {}).get("multiplier", DEFAULT_SUPERVISED_MULTIPLIER)
            )
        }
        for c in (*OBJECTS, *STYLES)
    }


def capture_anchor_activations(
    model: ResolvedModel, work: Path, hookpoint: str, num_inference_steps: int,
    guidance_scale: float, seed: int,
) -> Path:
    """The anchor prompts' activations at ``hookpoint`` in ``work``; a finished capture with
    the same settings is reused (the SAEs and the supervised SAEs share one)."""

    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "anchor_prompts.txt"
    prompts.write_text("\n".join(p for p, _, _ in anchor_prompts()) + "\n", encoding="utf-8")
    acts = work / f"activations-{hookpoint}"
    run_cache(
        # Built from its fields (not a dict) so that the model stays resolved.
        CacheConfig(
            model=model,
            hookpoint=hookpoint,
            prompts=str(prompts),
            out=str(acts),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_shard_mb=8.0,
            dtype="float32",
            seed=seed,
        )
    )
    return acts


def build_saes(cfg: AssetConfig) -> dict[str, float | None]:
    """Capture anchor-prompt activations at both hookpoints and train an SAE on each."""

    folder = writable_bundle_folder(cfg.resolved_model, cfg.out)
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="minicanvas-assets-"))
    heldout: dict[str, float | None] = {}
    for hookpoint in (OBJECT_HOOKPOINT, STYLE_HOOKPOINT):
        acts = capture_anchor_activations(
            cfg.resolved_model, work, hookpoint, cfg.num_inference_steps, cfg.guidance_scale,
            cfg.seed,
        )
        train_sae(
            TrainConfig(
                activations=str(acts),
                out=str(folder / "saes"),
                sae=SaeConfig(k=cfg.k, expansion_factor=cfg.expansion_factor),
                batch_size=cfg.batch_size,
                epochs=cfg.epochs,
                heldout_fraction=0.1,
                seed=cfg.seed,
                resume=False,
            )
        )
        # The trainer's resume state (Adam moments) is three times the SAE: not shipped.
        shutil.rmtree(folder / "saes" / hookpoint / STATE_DIR, ignore_errors=True)
        meta_path = folder / "saes" / hookpoint / SAE_META
        meta = json.loads(meta_path.read_text("utf-8"))
        meta["data"] = (
            f"MiniCanvas' {len(anchor_prompts())} anchor prompts (two phrasings of each "
            "object-style pair and three unstyled phrasings of each object), sampled with "
            f"DDIM, {cfg.num_inference_steps} steps, CFG {cfg.guidance_scale}, seed "
            f"{cfg.seed}; every step, conditional half; 10 % held out"
        )
        atomic_write_json(meta_path, meta)
        log = json.loads((folder / "saes" / hookpoint / TRAIN_LOG).read_text("utf-8"))
        epochs = log.get("epochs", [])
        heldout[hookpoint] = epochs[-1].get("heldout_fvu") if epochs else None
    make_json_portable(folder / "saes", {"": folder, work.name: work})
    return heldout


def build_stats(cfg: AssetConfig, pipe: Any = None) -> None:
    """Per-step statistics of every concept at its hookpoint, from the anchor prompts."""
    folder = writable_bundle_folder(cfg.resolved_model, cfg.out)
    pipe = pipe or load_pipeline(cfg.resolved_model)
    for hookpoint, concepts in ((OBJECT_HOOKPOINT, OBJECTS), (STYLE_HOOKPOINT, STYLES)):
        sae = Sae.from_pretrained(folder / "saes", hookpoint=hookpoint)
        for concept in concepts:
            stats = collect_stats(
                pipe,
                sae,
                concept_prompts(concept),
                concept=concept,
                hookpoint=hookpoint,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                seed=cfg.seed,
                batch_size=16,
                activation_site=sae.meta.get("activation_site", "output"),
                progress=False,
            )
            stats.meta["model"] = "minicanvas"
            stats.save(folder / "stats" / hookpoint / concept)
            logger.info("statistics of %s at %s", concept, hookpoint)
    make_json_portable(folder / "stats", {"": folder})


def load_stats(folder: Path, concept: str) -> ConceptStats:

    return ConceptStats.load(folder / "stats" / concept_hookpoint(concept) / concept)


def select_features(
    folder: Path,
    concept: str,
    tau: int,
    stats_cache: dict[str, Any] | None = None,
    max_other_ratio: float | None = None,
) -> ConceptFeatures:
    """Contrastive features of ``concept`` against the other concepts of its kind."""

    cache = stats_cache if stats_cache is not None else {}
    kind = concept_kind(concept)
    peers = OBJECTS if kind == "object" else STYLES
    for name in peers:
        if name not in cache:
            cache[name] = load_stats(folder, name)
    others = [cache[name] for name in peers if name != concept]
    features = select_contrastive(
        cache[concept], others, tau=tau, max_other_ratio=max_other_ratio
    )
    features.meta["hookpoint"] = concept_hookpoint(concept)
    return features


def write_features(folder: Path, params: dict[str, dict[str, Any]] | None = None) -> None:
    """Select and store the features of every concept with its (tuned) tau."""
    params = params or load_params(folder)
    cache: dict[str, Any] = {}
    fingerprints = sae_fingerprints(folder / "saes")
    for concept in (*OBJECTS, *STYLES):
        features = select_features(
            folder, concept, int(params[concept]["tau"]), cache,
            params[concept].get("max_other_ratio"),
        )  # fmt: skip
        features.meta["multiplier"] = float(params[concept]["multiplier"])
        features.meta[SAE_FINGERPRINT] = fingerprints[concept_hookpoint(concept)]
        features.save(folder / "features" / concept_hookpoint(concept) / concept)


def sae_fingerprints(saes: Path) -> dict[str, str]:
    """The fingerprint of each hookpoint's SAE in a bundle's SAE folder."""
    return {
        hookpoint: Sae.from_pretrained(saes, hookpoint=hookpoint).fingerprint()
        for hookpoint in (OBJECT_HOOKPOINT, STYLE_HOOKPOINT)
    }


def recorded_settings(cfg: Config) -> dict[str, Any]:
    """A build's settings as a bundle records them: its ``out`` and ``workdir`` folders by
    name only, so a shipped bundle names no path of the machine that built it."""
    settings = cfg.to_dict()
    for key in ("out", "workdir"):
        if settings.get(key):
            settings[key] = Path(settings[key]).name
    return settings


def build_assets(cfg: AssetConfig) -> dict[str, Any]:
    heldout = build_saes(cfg)
    build_stats(cfg)
    folder = writable_bundle_folder(cfg.resolved_model, cfg.out)
    write_features(folder)
    summary = {"heldout_fvu": heldout, "settings": recorded_settings(cfg)}
    atomic_write_json(folder / ASSETS_SUMMARY, summary)
    write_bundle(folder)
    return summary
