"""How a pipeline samples (:class:`SamplingConfig`), in a module without torch.

Every command's config nests it, and ``--help`` builds the configs;
:mod:`saeuron.models.sampling` (schedulers, generators) re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saeuron.models.defaults import model_defaults
from saeuron.models.resolve import ResolvedModel, resolve_model
from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.config_parts import BatchSize, Device, GuidanceScale, InferenceSteps, Seed

if TYPE_CHECKING:
    import torch

SCHEDULERS = ("ddim", "pipeline")
"""``ddim``: DDIM on the model's own noise schedule, as the published SAeUron code samples;
``pipeline``: the scheduler the pipeline ships with (PNDM for SD 1.x, Euler for SDXL, ...)."""

MAX_BATCH = 4096
"""Most prompts in one pipeline call."""

MAX_SIDE = 4096
"""Largest image side accepted (pixels): beyond it a UNet step needs hundreds of GB."""


@dataclass
class SamplingConfig(Config):
    step_count: InferenceSteps = field(
        InferenceSteps, flatten=True, help="the steps",
        limits={"num_inference_steps": {"ge": 1, "le": 1000}},
        describe={"num_inference_steps":
                  "denoising steps; default: the model's (MiniCanvas 20, SD 50)"},
    )  # fmt: skip
    guidance_strength: GuidanceScale = field(
        GuidanceScale, flatten=True, help="the guidance",
        limits={"guidance_scale": {"ge": 0, "le": 100}},
        describe={"guidance_scale":
                  "classifier-free guidance scale (<= 1: no CFG); default: the model's"},
    )  # fmt: skip
    use_fp16: bool = field(
        True, help="half precision where it is fast (CUDA, MPS); the CPU always runs float32"
    )
    runtime: Device = field(Device, flatten=True, help="where it samples")
    scheduler: str = field(
        "ddim",
        choices=SCHEDULERS,
        help="'ddim': DDIM on the model's own noise schedule (betas, spacing, offset), as the "
        "published SAeUron code samples; 'pipeline': the model's own scheduler (SD 1.x: PNDM, "
        "SDXL: Euler, SDXL-Turbo: Euler ancestral). Flow-matching models keep theirs",
    )
    seeds: Seed = field(Seed, flatten=True, help="the seeds",
                        describe={"seed": "prompt i samples with seed + i"})  # fmt: skip
    batches: BatchSize = field(BatchSize, flatten=True, help="the batches",
                               describe={"batch_size": "prompts per pipeline call"},
                               limits={"batch_size": {"le": MAX_BATCH}})  # fmt: skip
    height: int | None = field(
        None,
        ge=8,
        le=MAX_SIDE,
        help="image height in pixels, a multiple of 8; default: the model's",
    )
    width: int | None = field(
        None, ge=8, le=MAX_SIDE, help="image width in pixels, a multiple of 8; default: the model's"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ConfigError(name, f"got {value}; must be a positive multiple of 8")

    def resolved(self, model: ResolvedModel | str) -> SamplingConfig:
        """A copy with the model's defaults filled in where this config says ``None``.

        ``model`` is resolved here when given by name (a technique config of one's own calls
        this at its edge); the package's own configs pass the resolved model."""
        defaults = model_defaults(resolve_model(model))
        return self.replace(
            num_inference_steps=self.num_inference_steps or defaults.num_inference_steps,
            guidance_scale=(
                self.guidance_scale if self.guidance_scale is not None else defaults.guidance_scale
            ),
        )

    @property
    def steps(self) -> int:
        """Denoising steps of a resolved config."""
        if self.num_inference_steps is None:
            raise RuntimeError("resolve the sampling config against its model first")
        return self.num_inference_steps

    @property
    def guidance(self) -> float:
        if self.guidance_scale is None:
            raise RuntimeError("resolve the sampling config against its model first")
        return self.guidance_scale

    # torch is loaded by the two methods that hand a torch object over, when sampling is
    # about to start, not with the config: --help builds the config and must stay light.
    def torch_device(self) -> torch.device:
        from saeuron.utils.devices import resolve_device  # noqa: PLC0415

        return resolve_device(self.device)

    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The compute dtype: fp16 where it is fast and wanted, else fp32."""
        from saeuron.utils.devices import sampling_dtype  # noqa: PLC0415

        return sampling_dtype(device, self.use_fp16)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a pipeline call (steps, guidance, size)."""
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
        }
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        return kwargs
