"""The SAE layer: the model (:mod:`.model`), its architecture (:mod:`.config`) and the
checkpoint layouts it reads (:mod:`.formats`)."""

from saeuron.sae.config import SaeConfig
from saeuron.sae.formats import SAE_FORMATS, Checkpoint, detect_format
from saeuron.sae.model import EncoderOutput, ForwardOutput, Sae

__all__ = [
    "SAE_FORMATS",
    "Checkpoint",
    "EncoderOutput",
    "ForwardOutput",
    "Sae",
    "SaeConfig",
    "detect_format",
]
