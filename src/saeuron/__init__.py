"""saeuron: erase concepts from text-to-image diffusion models by editing SAE features."""

from .erase import EraseConfig, erase
from .features import ConceptFeatures
from .sae import Sae, SaeConfig

__all__ = [
    "ConceptFeatures",
    "EraseConfig",
    "SAeUron",
    "SAeUronPipeline",
    "Sae",
    "SaeConfig",
    "erase",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The technique pulls in diffusers; import it only when asked for.
    if name == "SAeUron":
        from .technique import SAeUron

        return SAeUron
    if name == "SAeUronPipeline":  # eval-unlearn's name for it (see saeuron.integrations)
        from .integrations.eval_unlearn import SAeUronPipeline

        return SAeUronPipeline
    raise AttributeError(f"module 'saeuron' has no attribute {name!r}")
