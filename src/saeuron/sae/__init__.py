"""The SAE layer: the model (:mod:`.model`), its architecture (:mod:`.config`) and the
checkpoint layouts it reads (:mod:`.formats`)."""

from saeuron.sae import formats  # noqa: F401  (registers the checkpoint layouts)
from saeuron.sae.config import SaeConfig
from saeuron.sae.model import SAE_FORMATS, EncoderOutput, ForwardOutput, Sae, detect_format

__all__ = [
    "SAE_FORMATS",
    "EncoderOutput",
    "ForwardOutput",
    "Sae",
    "SaeConfig",
    "detect_format",
]
