"""Settings of ``saeuron ui``: what to serve, where, and the bounds every request must keep."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

from saeuron.erasure.edit_parts import Hookpoint, RecipeRef, SaeName
from saeuron.erasure.erase_config import MAX_MULTIPLIER
from saeuron.minicanvas.config_parts import (
    MINICANVAS_GUIDANCE,
    NAME,
    Steps,
)
from saeuron.models.defaults import model_defaults
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.config_parts import Device, GuidanceScale

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 30.0
"""The CFG scales the page offers (its slider's range)."""


@dataclass
class UiConfig(ResolvesModel, Config):
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "model id, local folder, or a bundled name"})
    sae_name: SaeName = field(SaeName, flatten=True, help="the SAE", describe={
        "sae": "SAE repo id or folder; default: the model's known SAE"})
    site: Hookpoint = field(Hookpoint, flatten=True, help="where", describe={
        "hookpoint": "module the SAE reads; default: per concept (bundled) or the SAE's own"})
    recipe_ref: RecipeRef = field(RecipeRef, flatten=True, help="the recipe", describe={
        "recipe": "an erasure recipe (file, folder of recipes, or hub id), or 'bundled' for "
        "the model bundle's recipes: one slider per concept, 0 off, 1 its tuned strength"})
    host: str = field("127.0.0.1", help="address to serve on (0.0.0.0 exposes it to the network)")
    port: int = field(7860, ge=1, le=65535, help="port to serve on")
    runtime: Device = field(Device, flatten=True, help="where the model runs", describe={
        "device": "cpu, cuda, cuda:N or mps; default: the best available"})
    denoising: Steps = field(Steps, flatten=True, help="the page's first steps",
                             describe={"steps": "denoising steps shown when the page opens"},
                             limits={"steps": {"ge": 1, "le": 1000}})
    guidance: GuidanceScale = field(
        MINICANVAS_GUIDANCE, flatten=True,
            required=("guidance_scale",), help="the page's first guidance",
        describe={"guidance_scale": "CFG scale shown when the page opens"},
        limits={"guidance_scale": {"ge": MIN_GUIDANCE, "le": MAX_GUIDANCE}},
    )  # fmt: skip
    max_steps: int = field(50, ge=1, le=1000, help="largest number of steps a request may ask for")
    max_prompt_chars: int = field(
        200, ge=1, le=10_000, help="longest prompt accepted, in characters"
    )
    max_concept_chars: int = field(
        60, ge=1, le=1000, help="longest free-text concept accepted, in characters"
    )
    max_batch: int = field(4, ge=1, le=64, help="most images per request")
    max_concepts: int = field(4, ge=1, le=16, help="most concepts stacked at once")
    queue_size: int = field(
        64, ge=1, le=10_000, help="requests that may wait for the one pipeline; more are refused "
        "until the queue drains, so memory stays bounded however many people use the page"
    )
    max_multiplier: float = field(
        100.0,
        gt=0,
        le=MAX_MULTIPLIER,
        help="the multiplier sliders run from -MAX_MULTIPLIER to +MAX_MULTIPLIER",
    )
    feature_images: int = field(
        20,
        ge=1,
        le=1000,
        help="images sampled to find the features of a free-text concept (shortcut method)",
    )

    def __post_init__(self) -> None:
        for name in ("model", "host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, f"got {value!r}; must be a non-empty string")
        if self.recipe is not None and not self.recipe.strip():
            raise ConfigError("recipe", "got an empty name; a recipe file, folder or hub id")
        # The page's model, looked up once: the studio and its checks read resolved_model.
        model = self._resolve_model()
        if self.sae is None and self.recipe is None and model_defaults(model).sae is None:
            raise ConfigError(
                "sae",
                f"no SAE is known for model {self.model!r}; name one with --sae (and --hookpoint)",
            )
        check_range("steps", self.steps, ge=1, le=self.max_steps)


def check_address(host: str, port: int) -> None:
    """Refuse, before the model loads, an address the server could not listen on.

    The host must resolve to an address of this machine and the port must be free: binding
    a socket to it and closing it again says so now, where gradio would say it only after
    the model had loaded. A host that exposes the page beyond this machine is allowed, with
    a warning.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(
            "host", f"got {host!r}: not an address or a known host name ({err}); e.g. 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by an earlier server is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "port", f"{port} is in use on {host}; pick another with --port"
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(
                    "host", f"got {host!r}: not an address of this machine; e.g. 127.0.0.1"
                ) from None
            if err.errno == errno.EACCES:
                raise ConfigError(
                    "port", f"{port} needs privileges on this machine; pick one above 1023"
                ) from None
            raise ConfigError("host", f"cannot listen on {host}:{port}: {err.strerror}") from None
    if exposed(host, address[0]):
        logger.warning(
            "host %s exposes the page to every machine that can reach this one: anyone there "
            "can run the model and read its images. Use --host 127.0.0.1 to keep it local",
            host,
        )


def exposed(host: str, address: str) -> bool:
    """Whether a server on ``host`` (resolved to ``address``) is reachable from elsewhere."""
    try:
        return not ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return host not in ("localhost",)
