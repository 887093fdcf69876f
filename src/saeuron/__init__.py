"""saeuron: erase concepts from text-to-image diffusion models by editing SAE features.

The public API, importable from the package itself::

    import saeuron
    tech = saeuron.SAeUron(erase_concept="moon", model="minicanvas")
    with saeuron.erase(pipe, sae, features, multiplier=-20.0): ...

Names are imported on first use, so ``import saeuron`` (and ``saeuron --help``) does not load
torch or diffusers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from saeuron.utils.notices import silence_known_notices

__version__ = "0.2.0"

# Before anything imports diffusers or transformers: their notices that say nothing to a
# saeuron user are dropped by exact text (saeuron/utils/notices.py says which and why).
silence_known_notices()

_EXPORTS: dict[str, str] = {
    # the method
    "SAeUron": "saeuron.erasure.technique",
    "SAeUronConfig": "saeuron.erasure.technique_config",
    "erase": "saeuron.erasure.erase",
    "attach": "saeuron.erasure.recipe_erasure",
    "attach_recipe": "saeuron.erasure.recipe_erasure",
    "Recipe": "saeuron.erasure.recipe",
    "RecipeErasure": "saeuron.erasure.recipe_erasure",
    "Erasure": "saeuron.erasure.erase",
    "EraseConfig": "saeuron.erasure.erase_config",
    "ConceptFeatures": "saeuron.erasure.features",
    "build_concept": "saeuron.erasure.concepts.build",
    "ConceptBuildConfig": "saeuron.erasure.concepts.build_config",
    "ConceptStats": "saeuron.erasure.concepts.stats",
    # the SAE
    "Sae": "saeuron.sae.model",
    "SaeConfig": "saeuron.sae.config",
    # models
    "load_pipeline": "saeuron.models.pipelines",
    "SamplingConfig": "saeuron.models.sampling_config",
    # training
    "run_cache": "saeuron.training.capture",
    "CacheConfig": "saeuron.training.capture_config",
    "train_sae": "saeuron.training.trainer",
    "TrainConfig": "saeuron.training.train_config",
    # eval-unlearn's name for the technique (its own "saeuron" wrapper builds it)
    "SAeUronPipeline": "saeuron.integrations.eval_unlearn",
    # errors
    "ConfigError": "saeuron.utils.errors",
    "UserError": "saeuron.utils.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from saeuron.erasure.concepts.build import build_concept as build_concept
    from saeuron.erasure.concepts.build_config import ConceptBuildConfig as ConceptBuildConfig
    from saeuron.erasure.concepts.stats import ConceptStats as ConceptStats
    from saeuron.erasure.erase import Erasure as Erasure
    from saeuron.erasure.erase import erase as erase
    from saeuron.erasure.erase_config import EraseConfig as EraseConfig
    from saeuron.erasure.features import ConceptFeatures as ConceptFeatures
    from saeuron.erasure.recipe import Recipe as Recipe
    from saeuron.erasure.recipe_erasure import RecipeErasure as RecipeErasure
    from saeuron.erasure.recipe_erasure import attach as attach
    from saeuron.erasure.recipe_erasure import attach_recipe as attach_recipe
    from saeuron.erasure.technique import SAeUron as SAeUron
    from saeuron.erasure.technique_config import SAeUronConfig as SAeUronConfig
    from saeuron.models.pipelines import load_pipeline as load_pipeline
    from saeuron.models.sampling_config import SamplingConfig as SamplingConfig
    from saeuron.sae.config import SaeConfig as SaeConfig
    from saeuron.sae.model import Sae as Sae
    from saeuron.training.capture import run_cache as run_cache
    from saeuron.training.capture_config import CacheConfig as CacheConfig
    from saeuron.training.train_config import TrainConfig as TrainConfig
    from saeuron.training.trainer import train_sae as train_sae
    from saeuron.utils.errors import ConfigError as ConfigError
    from saeuron.utils.errors import UserError as UserError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saeuron' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
