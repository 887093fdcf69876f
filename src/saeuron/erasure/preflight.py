"""Everything an erasure needs, checked before the model loads.

:func:`check_erasure` runs in :class:`~saeuron.erasure.technique.SAeUron` before the pipeline
loads, and in ``saeuron eval --check``. It reads config files and tensor headers only:

- the device exists on this machine;
- the model is a bundled name, a test model, a diffusers folder or a hub id (cached, when
  the hub is offline);
- the SAE folder exists and holds a checkpoint whose config and tensor shapes agree;
- the hookpoint is a module of the model's denoiser and as wide as the SAE;
- the number of steps fits the scheduler's training schedule; the image size is valid;
- the features exist, are readable, were computed at that hookpoint and select latents
  the SAE has.

Whether the features were selected from this very SAE (its fingerprint) needs the SAE's
weights: they are read (not the model's) when the features record one, and
:func:`saeuron.erasure.erase.attach` checks it again for features given in Python.
"""

from __future__ import annotations

from pathlib import Path

from saeuron.erasure.erase import check_same_sae
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.recipe import Recipe
from saeuron.models.layout import check_model_inputs, read_layout
from saeuron.models.pipelines import check_model
from saeuron.models.resolve import ResolvedModel
from saeuron.models.sampling import SamplingConfig
from saeuron.sae import Sae
from saeuron.sae.header import SaeHeader, read_sae_header
from saeuron.utils.devices import resolve_device
from saeuron.utils.errors import ConfigError, ModelUnavailableError, UserError
from saeuron.utils.hub import missing_pieces


def check_features(
    features: ConceptFeatures, header: SaeHeader | None, hookpoint: str, setting: str = "features"
) -> None:
    """Features fit the SAE and hookpoint they will edit."""
    if features.hookpoint and features.hookpoint != hookpoint:
        raise ConfigError(
            setting,
            f"features of {features.concept!r} were computed at {features.hookpoint}, "
            f"not at {hookpoint}",
        )
    latents = features.latents()
    if header is not None and latents and max(latents) >= header.num_latents:
        raise ConfigError(
            setting,
            f"features of {features.concept!r} select latent {max(latents)}, but the SAE at "
            f"{header.folder} has {header.num_latents}: they belong to another SAE",
        )


def check_erasure(
    model: ResolvedModel,
    sampling: SamplingConfig,
    sae: str,
    hookpoint: str | None,
    features: str | Path | None = None,
) -> SaeHeader | None:
    """Refuse, before any weight loads, an erasure that cannot run (see the module docs).

    Returns the SAE's header (None for a hub SAE not downloaded yet, checked once it is).
    Every missing piece (the model and SAE not in the cache while offline, features not on
    disk) is named in one error, not one per run."""
    resolve_device(sampling.device)
    check_model(model)
    header = _available_pieces(model, sae, hookpoint, features)
    hookpoint = hookpoint or (header.hookpoint if header is not None else None)
    if header is not None and hookpoint is None:
        raise ConfigError("hookpoint", f"the SAE at {header.folder} does not say where it reads")
    check_model_inputs(
        model,
        sampling,
        hookpoints=[hookpoint] if hookpoint else [],
        d_in=header.d_in if header is not None else None,
    )
    if features is not None and hookpoint is not None:
        loaded = ConceptFeatures.load(features)
        check_features(loaded, header, hookpoint)
        if header is not None and loaded.sae_fingerprint is not None:
            # The SAE's weights, not the model's: read now, so that features of another SAE
            # are refused before the pipeline loads rather than after.
            check_same_sae([loaded], Sae.load_from_disk(header.folder))
    return header


def check_recipe_erasure(model: ResolvedModel, sampling: SamplingConfig, recipe: Recipe) -> None:
    """A recipe's erasure, before any weight loads: the device, the model, the sizes at the
    recipe's hookpoints, and every file the recipe names (all missing ones in one error)."""
    resolve_device(sampling.device)
    check_model(model)
    hookpoints = sorted({e.hookpoint for c in recipe.concepts.values() for e in c.edits})
    check_model_inputs(model, sampling, hookpoints=hookpoints)
    problems = recipe.check_files()
    if problems:
        raise FileNotFoundError("recipe: " + "; ".join(problems))


def _available_pieces(
    model: ResolvedModel, sae: str, hookpoint: str | None, features: str | Path | None
) -> SaeHeader | None:
    """The SAE's header, once the model, the SAE and the features are all here; else the one
    error that names each piece that is not."""
    missing: list[UserError] = []
    try:
        # Reads the model's config files; offline and not cached, that is the error.
        read_layout(model)
    except ModelUnavailableError as err:
        missing.append(err)
    header = None
    try:
        header = read_sae_header(sae, hookpoint)
    except ModelUnavailableError as err:
        missing.append(err)
    if features is not None:
        if not Path(features).name:  # '', '.', '/': no NAME to read NAME.safetensors of
            raise ConfigError(
                "features", f"got {str(features)!r}; expected the path NAME of NAME.safetensors "
                "+ NAME.json"
            )  # fmt: skip
        base = Path(features).with_suffix("")
        absent = [
            str(file)
            for file in (base.with_suffix(".safetensors"), base.with_suffix(".json"))
            if not file.is_file()
        ]
        verb = "does" if len(absent) == 1 else "do"
        if absent and missing:
            missing.append(
                ModelUnavailableError(
                    f"features: {' and '.join(absent)} {verb} not exist",
                    piece=f"features {str(features)!r} ({' and '.join(absent)} {verb} not exist)",
                )
            )
    # Features alone missing keep their own error (ConceptFeatures.load says what they are).
    if missing:
        raise missing_pieces(missing)
    return header


def bundled_features(model: ResolvedModel, concept: str, hookpoint: str | None) -> Path | None:
    """A bundled model's shipped features of ``concept`` (None: not shipped)."""
    bundle = model.bundle
    return bundle.features_path(concept, hookpoint) if bundle is not None else None
