"""Settings of ``saeuron ui``: what to serve, where, and the bounds every request must keep."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.models.defaults import model_defaults
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.devices import check_device

MAX_SEED = 2**31 - 1


@dataclass
class UiConfig(Config):
    model: str = field("minicanvas", help="model id, local folder, or a bundled name")
    sae: str | None = field(None, help="SAE repo id or folder; default: the model's known SAE")
    hookpoint: str | None = field(
        None, help="module the SAE reads; default: per concept (bundled) or the SAE's own"
    )
    host: str = field("127.0.0.1", help="address to serve on (0.0.0.0 exposes it to the network)")
    port: int = field(7860, help="port to serve on")
    device: str | None = field(None, help="cpu, cuda, cuda:N or mps; default: the best available")
    steps: int = field(20, help="denoising steps shown when the page opens")
    guidance_scale: float = field(7.5, help="CFG scale shown when the page opens")
    max_steps: int = field(50, help="largest number of steps a request may ask for")
    max_prompt_chars: int = field(200, help="longest prompt accepted, in characters")
    max_concept_chars: int = field(60, help="longest free-text concept accepted, in characters")
    max_batch: int = field(4, help="most images per request")
    max_concepts: int = field(4, help="most concepts stacked at once")
    max_multiplier: float = field(
        100.0, help="the multiplier sliders run from -MAX_MULTIPLIER to +MAX_MULTIPLIER"
    )
    feature_images: int = field(
        20, help="images sampled to find the features of a free-text concept (shortcut method)"
    )

    def __post_init__(self) -> None:
        for name in ("model", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, f"got {value!r}; must be a non-empty string")
        if self.sae is None and model_defaults(self.model).sae is None:
            raise ConfigError(
                "sae",
                f"no SAE is known for model {self.model!r}; name one with --sae (and --hookpoint)",
            )
        check_range("port", self.port, ge=1, le=65535)
        check_device("device", self.device)
        check_range("max_steps", self.max_steps, ge=1, le=1000)
        check_range("steps", self.steps, ge=1, le=self.max_steps)
        check_range("guidance_scale", self.guidance_scale, ge=1.0, le=30.0)
        check_range("max_prompt_chars", self.max_prompt_chars, ge=1, le=10_000)
        check_range("max_concept_chars", self.max_concept_chars, ge=1, le=1000)
        check_range("max_batch", self.max_batch, ge=1, le=64)
        check_range("max_concepts", self.max_concepts, ge=1, le=16)
        check_range("max_multiplier", self.max_multiplier, gt=0, le=10_000)
        check_range("feature_images", self.feature_images, ge=1, le=1000)
