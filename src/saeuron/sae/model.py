"""The sparse autoencoder: TopK SAE with a shared pre-encoder bias (SAeUron, section 3).

    pre   = ReLU(W_enc (x - b_dec) + b_enc)
    a     = TopK(pre)                       # per token at inference, BatchTopK in training
    x_hat = a W_dec + b_dec                 # rows of W_dec kept at unit norm

Checkpoints are written in the EleutherAI ``sae``/``sparsify`` layout of the published
SAeUron SAEs: one folder per hookpoint with ``cfg.json`` and ``sae.safetensors``. Every
published layout (SAeUron, SAEmnesia, sdxl-unbox) is read by :mod:`saeuron.sae.formats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeuron.sae.config import SaeConfig
from saeuron.sae.formats import (
    ROOT_FILES,
    Checkpoint,
    hookpoints_in,
    hub_patterns,
    locate,
    looks_like_checkpoint,
    read_checkpoint,
    read_json_object,
    refuse_pickles,
    unbox_hookpoints,
)
from saeuron.utils.cards import PROJECT_URL, card_metadata, render_card, table, write_card
from saeuron.utils.errors import ConfigError, ModelUnavailableError
from saeuron.utils.files import SAE_CONFIG, SAE_META, SAE_WEIGHTS
from saeuron.utils.hub import is_hub_id, push_folder, snapshot
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)

UNIT_NORM_EPS = 1e-5
"""Added to a token's standard deviation where an SAE standardises its input
(``input_unit_norm``): the input is divided by ``std + UNIT_NORM_EPS`` and a decoded output or
edit multiplied back by it. The SAE was trained with this value, so every encoder, hook and
rule that reads its latents must use the same one."""


class SaeWeights(NamedTuple):
    """An SAE's tensors on one device in one dtype (an activation's), for the erasing hook."""

    encoder: Tensor
    """``[num_latents, d_in]``"""
    encoder_bias: Tensor
    b_dec: Tensor
    decoder: Tensor
    """``[num_latents, d_in]``"""


class Standardised(NamedTuple):
    x: Tensor
    """What the encoder reads."""
    mean: Tensor | None
    """Token means, ``[tokens, 1]`` (``None``: the SAE reads its input as it is)."""
    std: Tensor | None
    """Token standard deviations of the centred input, ``[tokens, 1]``."""


class EncoderOutput(NamedTuple):
    top_acts: Tensor
    """Activations of the selected latents, ``[tokens, k]``."""
    top_indices: Tensor
    """Their indices, ``[tokens, k]``."""


class ForwardOutput(NamedTuple):
    sae_out: Tensor
    """Reconstruction ``[tokens, d_in]``."""
    latent_acts: Tensor
    """Active latent values ``[tokens, m]`` (m = k at inference; padded with zeros in BatchTopK)."""
    latent_indices: Tensor
    """Their indices ``[tokens, m]``."""
    fvu: Tensor
    """Fraction of variance unexplained."""
    auxk_loss: Tensor
    """AuxK loss: dead latents reconstructing the residual (0 without a dead mask)."""


class Sae(nn.Module):
    def __init__(
        self,
        cfg: SaeConfig,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if cfg.d_in is None:
            raise ConfigError("d_in", "an SAE needs the width of its input; got None")
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.num_latents = cfg.num_latents
        self.encoder = nn.Linear(cfg.d_in, cfg.num_latents, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        # The decoder starts as the encoder's transpose with unit rows, as the paper does.
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        if cfg.normalize_decoder:
            self.set_decoder_norm_to_unit_norm()
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        self.meta: dict[str, Any] = {}
        """Free-form provenance (hookpoint, model, activation site), saved as saeuron.json."""

    @property
    def device(self) -> torch.device:
        return self.encoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.weight.dtype

    # -- encoding -----------------------------------------------------------------------
    # The one implementation of standardise / encode / TopK gate / decode: the erasing hook
    # and its rules call these with the SAE's tensors cast to the activations' device and
    # dtype (``weights``), so an edit reads the latents training saw.

    def cast_weights(self, device: torch.device, dtype: torch.dtype) -> SaeWeights:
        """This SAE's tensors, detached, on ``device`` in ``dtype``."""

        def cast(t: Tensor) -> Tensor:
            return t.detach().to(device=device, dtype=dtype)

        return SaeWeights(
            cast(self.encoder.weight), cast(self.encoder.bias), cast(self.b_dec), cast(self.W_dec)
        )

    def standardise(self, x: Tensor) -> Standardised:
        """What the encoder reads, with the token means and standard deviations that undo it
        (``None`` for an SAE that reads its input as it is)."""
        if not self.cfg.input_unit_norm:
            return Standardised(x, None, None)
        mean = x.mean(dim=-1, keepdim=True)
        x = x - mean
        std = x.std(dim=-1, keepdim=True)
        return Standardised(x / (std + UNIT_NORM_EPS), mean, std)

    @staticmethod
    def unstandardise_delta(delta: Tensor, std: Tensor | None) -> Tensor:
        """A change made in the standardised space, in the input's scale (the mean cancels)."""
        return delta if std is None else delta * (std + UNIT_NORM_EPS)

    @classmethod
    def unstandardise(cls, out: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
        """A decoded output in the input's scale and offset."""
        if std is None:
            return out
        assert mean is not None
        return cls.unstandardise_delta(out, std) + mean

    def pre_acts(self, x: Tensor, weights: SaeWeights | None = None) -> Tensor:
        """ReLU pre-activations of every latent, ``[tokens, num_latents]``, with this SAE's
        parameters or the cast copy ``weights``."""
        if weights is None:
            encoder, encoder_bias, b_dec = self.encoder.weight, self.encoder.bias, self.b_dec
        else:
            encoder, encoder_bias, b_dec = weights.encoder, weights.encoder_bias, weights.b_dec
        return F.relu(F.linear(x - b_dec, encoder, encoder_bias))

    def select_topk(self, pre: Tensor) -> EncoderOutput:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(values, indices)

    def topk_threshold(self, pre: Tensor) -> Tensor:
        """Each token's k-th largest pre-activation, ``[tokens, 1]``: the TopK gate."""
        return self.select_topk(pre).top_acts.min(dim=-1, keepdim=True).values

    def topk_acts(self, pre: Tensor, latents: Tensor) -> Tensor:
        """The TopK activations of ``latents`` alone, ``[tokens, len(latents)]``: a latent's
        pre-activation where it made its token's top k, else 0. Ties at the gate pass."""
        acts = pre.index_select(-1, latents)
        return torch.where(acts >= self.topk_threshold(pre), acts, torch.zeros_like(acts))

    def select_batch_topk(self, pre: Tensor) -> EncoderOutput:
        """Keep the ``k * tokens`` largest values over the whole batch.

        Tokens keep a variable number of latents; the result is padded to the largest
        count with zero activations so decode stays a dense gather.
        """
        n_tokens = pre.shape[0]
        budget = min(self.cfg.k * n_tokens, pre.numel())
        threshold = pre.flatten().topk(budget, sorted=False).values.min()
        keep = (pre >= threshold) & (pre > 0)
        width = max(int(keep.sum(dim=-1).max()), 1)
        values, indices = pre.topk(width, dim=-1, sorted=False)
        values = torch.where(values >= threshold, values, torch.zeros_like(values))
        return EncoderOutput(values, indices)

    def densify(self, top: EncoderOutput) -> Tensor:
        """A sparse code scattered into ``[tokens, num_latents]``."""
        dense = top.top_acts.new_zeros(top.top_acts.shape[0], self.num_latents)
        return dense.scatter_(-1, top.top_indices, top.top_acts)

    def encode(self, x: Tensor) -> EncoderOutput:
        """Per-token TopK code of ``x`` (``[..., d_in]`` flattened to tokens)."""
        x, _, _ = self.standardise(x.reshape(-1, self.d_in).to(self.dtype))
        return self.select_topk(self.pre_acts(x))

    def encode_dense(self, x: Tensor) -> Tensor:
        """Per-token TopK code scattered into ``[tokens, num_latents]``."""
        return self.densify(self.encode(x))

    # -- decoding -----------------------------------------------------------------------

    def decode(self, top_acts: Tensor, top_indices: Tensor, bias: bool = True) -> Tensor:
        """Sum of the selected decoder rows weighted by their activations (+ b_dec)."""
        out = F.embedding_bag(
            top_indices, self.W_dec, per_sample_weights=top_acts.to(self.W_dec.dtype), mode="sum"
        )
        return out + self.b_dec if bias else out

    def decode_dense(self, codes: Tensor, weights: SaeWeights | None = None) -> Tensor:
        """The decode of a dense code ``[tokens, num_latents]`` (+ b_dec), as one matmul: the
        form that stays one graph under ``torch.compile``, where :meth:`decode` gathers."""
        if weights is None:
            return codes @ self.W_dec + self.b_dec
        return codes @ weights.decoder + weights.b_dec

    def forward(
        self, x: Tensor, dead_mask: Tensor | None = None, batch_topk: bool = False
    ) -> ForwardOutput:
        x = x.reshape(-1, self.d_in).to(self.dtype)
        x_in, mean, std = self.standardise(x)
        pre = self.pre_acts(x_in)
        top = self.select_batch_topk(pre) if batch_topk else self.select_topk(pre)
        sae_out = self.unstandardise(self.decode(top.top_acts, top.top_indices), mean, std)

        residual = x - sae_out
        total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        fvu = residual.pow(2).sum() / total_variance

        auxk_loss = sae_out.new_zeros(())
        if dead_mask is not None and (num_dead := int(dead_mask.sum())) > 0:
            k_aux = self.d_in // 2
            scale = min(num_dead / k_aux, 1.0)
            k_aux = min(k_aux, num_dead)
            dead_pre = torch.where(dead_mask[None], pre, torch.full_like(pre, -math.inf))
            aux_acts, aux_indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
            aux_acts = aux_acts.clamp_min(0)  # -inf never wins when k_aux <= num_dead
            residual_hat = self.decode(aux_acts, aux_indices, bias=False)
            auxk_loss = scale * (residual_hat - residual.detach()).pow(2).sum() / total_variance

        return ForwardOutput(sae_out, top.top_acts, top.top_indices, fvu, auxk_loss)

    # -- decoder constraint ---------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        norm = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.data /= norm.clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out the gradient component that would change each row's norm."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec.data).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec.data

    def fingerprint(self) -> str:
        """SHA-256 of the architecture and weights: features and cached statistics made
        with another SAE (even one of the same shape) are told apart by it."""
        versions = tuple(p._version for p in self.parameters())
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == versions:
            return cached[1]
        digest = hashlib.sha256()
        digest.update(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_for_disk().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
        self._fingerprint = (versions, digest.hexdigest())
        return self._fingerprint[1]

    # -- persistence ------------------------------------------------------------------------

    def state_for_disk(self) -> dict[str, Tensor]:
        return {
            "encoder.weight": self.encoder.weight.detach().contiguous(),
            "encoder.bias": self.encoder.bias.detach().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
        }

    def save_to_disk(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` (+ ``saeuron.json``) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_safetensors(folder / SAE_WEIGHTS, self.state_for_disk())
        atomic_write_json(folder / SAE_CONFIG, self.cfg.to_dict())
        if self.meta:
            atomic_write_json(folder / SAE_META, self.meta)
        return folder

    # -- the hub ------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | Path,
        hookpoint: str | None = None,
        *,
        license: str | None = "mit",  # noqa: A002 - the hub's key
        data: str | None = None,
        base_model: str | None = None,
        repo_id: str | None = None,
    ) -> Path:
        """Write this SAE as a hub repo in SAeUron's layout: ``<hookpoint>/{cfg.json,
        sae.safetensors, saeuron.json}`` beside the SAEs of other hookpoints already in
        ``save_directory``, and a ``README.md`` model card describing all of them (base
        model, hookpoint, training data, k, held-out FVU, licence). ``data`` describes the
        training prompts (else what the SAE recorded); ``license`` is the card's; ``repo_id``
        the repo its example loads from. Returns the hookpoint's folder. Load it back with
        :meth:`from_pretrained`."""
        hookpoint = hookpoint or self.meta.get("hookpoint")
        if not hookpoint:
            raise ConfigError("hookpoint", "name the module this SAE reads; its folder is named so")
        root = Path(save_directory)
        folder = self.save_to_disk(root / hookpoint)
        extra = {"data": data, "model": base_model, "hookpoint": hookpoint}
        meta = {**self.meta, **{k: v for k, v in extra.items() if v is not None}}
        meta.pop("source", None)  # where it was loaded from says nothing in the repo
        atomic_write_json(folder / SAE_META, meta)
        write_card(root, sae_card(root, license=license, repo_id=repo_id))
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        hookpoint: str | None = None,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        license: str | None = "mit",  # noqa: A002 - the hub's key
        data: str | None = None,
        base_model: str | None = None,
    ) -> str:
        """Upload this SAE to ``repo_id`` (created if needed) as :meth:`save_pretrained` lays
        it out; the SAEs of other hookpoints already in the repo stay, and the card is
        written for all of them. Returns the commit URL."""
        with tempfile.TemporaryDirectory(prefix="saeuron-push-") as tmp:
            staging = Path(tmp)
            _fetch_card_inputs(repo_id, staging, token)
            self.save_pretrained(
                staging, hookpoint, license=license, data=data, base_model=base_model,
                repo_id=repo_id,
            )  # fmt: skip
            return push_folder(
                staging,
                repo_id,
                private=private,
                token=token,
                commit_message=commit_message
                or f"Upload SAE at {hookpoint or self.meta.get('hookpoint')}",
            )

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Sae:
        """An SAE holding what a checkpoint reader found."""
        sae = cls(checkpoint.cfg, dtype=checkpoint.dtype)
        sae.load_state_dict(checkpoint.state)
        for name, value in checkpoint.buffers.items():
            sae.register_buffer(name, value, persistent=False)
        sae.meta.update(checkpoint.meta)
        return sae

    @classmethod
    def load_from_disk(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        format: str | None = None,  # noqa: A002
        **format_kwargs: Any,
    ) -> Sae:
        """Load a checkpoint folder; the layout is detected unless named."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"SAE folder {folder} does not exist")
        sae = cls.from_checkpoint(read_checkpoint(folder, format, **format_kwargs))
        meta_path = folder / SAE_META
        if meta_path.exists():
            sae.meta = read_json_object(meta_path)
        sae.meta.setdefault("source", str(folder))
        return sae.to(device=device, dtype=dtype) if dtype else sae.to(device)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        hookpoint: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        **format_kwargs: Any,
    ) -> Sae:
        """Load from a local folder or a Hugging Face repo (``owner/name``).

        A repo or folder holding several SAEs keeps one sub-folder per hookpoint, as the
        published ones do (or sdxl-unbox's ``<hookpoint>_k.../final`` run folders);
        ``hookpoint`` picks it.
        """
        folder = Path(name_or_path)
        if not folder.exists():
            folder = _download(str(name_or_path), hookpoint, revision, cache_dir)
        found = locate(folder, hookpoint) if hookpoint else None
        if found is not None:
            folder = found
        elif not hookpoint and not looks_like_checkpoint(folder):
            available = hookpoints_in(folder)
            if not available:
                refuse_pickles(folder)
            if len(available) == 1:
                folder, hookpoint = locate(folder, available[0]) or folder, available[0]
            else:
                raise ConfigError(
                    "hookpoint",
                    f"{name_or_path} holds "
                    + (
                        f"SAEs for several hookpoints ({', '.join(available)}); name one"
                        if available
                        else "no SAE checkpoint (cfg.json + sae.safetensors or a published "
                        "layout)"
                    ),
                )
        elif hookpoint and not looks_like_checkpoint(folder):
            available = hookpoints_in(folder)
            if not available:
                refuse_pickles(folder)
            raise FileNotFoundError(
                f"hookpoint {hookpoint!r} not found in {name_or_path}; "
                f"available: {', '.join(available) or 'none'}"
            )
        sae = cls.load_from_disk(folder, device=device, dtype=dtype, **format_kwargs)
        if hookpoint:
            sae.meta.setdefault("hookpoint", hookpoint)
        sae.meta["source"] = str(name_or_path)
        return sae


def _fetch_card_inputs(repo_id: str, staging: Path, token: str | None) -> None:
    """The small files describing the SAEs already in ``repo_id`` (none for a new repo), so
    the card pushed with one more SAE describes them all."""
    try:
        source = snapshot(
            repo_id, what="SAE repo", allow_patterns=[f"*/{SAE_CONFIG}", f"*/{SAE_META}"],
            token=token,
        )  # fmt: skip
    except (ModelUnavailableError, OSError):
        return
    for path in source.glob(f"*/{SAE_CONFIG}"):
        target = staging / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for name in (SAE_CONFIG, SAE_META):
            if (path.parent / name).is_file():
                shutil.copyfile(path.parent / name, target / name)


def sae_card(
    root: str | Path,
    license: str | None = "mit",  # noqa: A002 - the hub's key
    repo_id: str | None = None,
) -> str:
    """The model card of a folder of SAEs (one sub-folder per hookpoint), from their files."""
    root = Path(root)
    rows, models, data = sae_summary(root)
    model = ", ".join(sorted(models)) or "not recorded"
    first = rows[0][0].strip("`") if rows else "unet.up_blocks.1.attentions.1"
    described = (
        "\n".join(f"- {d}" for d in sorted(data))
        if data
        else "Activations captured with `saeuron cache` while the model sampled its training "
        "prompts (every denoising step, the conditional half of the classifier-free-guidance "
        "batch); the prompt set was not recorded with these weights."
    )
    sections = [
        f"Sparse autoencoders (SAEs) trained on the activations of **{model}**, for erasing "
        f"concepts at inference time with [saeuron]({PROJECT_URL}) (SAeUron, Cywinski and "
        "Deja, ICML 2025). One folder per hookpoint, in the layout of the published SAeUron "
        "SAEs (`cfg.json` + `sae.safetensors`; `saeuron.json` records provenance).",
        "## SAEs\n\n" + sae_table(rows),
        "FVU: fraction of variance unexplained on held-out activations (lower is better).",
        "## Training data\n\n" + described,
        "## Use\n\n```python\nimport saeuron\n\nsae = saeuron.Sae.from_pretrained("
        f'"{repo_id or root.name}", hookpoint="{first}")\n```',
        "## Licence\n\n"
        + (
            f"The SAE weights are released under the `{license}` licence. The model they "
            "were trained on keeps its own licence."
            if license
            else "No licence was given for these weights."
        ),
    ]
    return render_card(
        card_metadata(license, next(iter(models)) if len(models) == 1 else None),
        f"SAEs for {model}",
        sections,
    )


def sae_table(rows: list[tuple[Any, ...]]) -> str:
    return table(
        ["hookpoint", "d_in", "latents", "k", "trained as", "reads", "held-out FVU",
         "tokens seen in training"],
        rows,
    )  # fmt: skip


def sae_summary(root: Path) -> tuple[list[tuple[Any, ...]], set[str], set[str]]:
    """One table row per SAE under ``root``, the models and the data they record."""
    rows: list[tuple[Any, ...]] = []
    models: set[str] = set()
    data: set[str] = set()
    if not root.is_dir():
        return rows, models, data
    for folder in sorted(p for p in root.iterdir() if (p / SAE_CONFIG).is_file()):
        cfg = read_json_object(folder / SAE_CONFIG)
        meta = read_json_object(folder / SAE_META) if (folder / SAE_META).is_file() else {}
        training = meta.get("training") or {}
        fvu = training.get("heldout_fvu")
        rows.append((
            f"`{meta.get('hookpoint', folder.name)}`", cfg.get("d_in"),
            cfg.get("num_latents") or (cfg.get("d_in") or 0) * cfg.get("expansion_factor", 0),
            cfg.get("k"), "BatchTopK" if cfg.get("batch_topk") else "TopK",
            meta.get("activation_site", "output"),
            f"{fvu:.3f}" if isinstance(fvu, (int, float)) else None,
            f"{training['tokens']:,}" if isinstance(training.get("tokens"), int) else None,
        ))  # fmt: skip
        if meta.get("model"):
            models.add(str(meta["model"]))
        if meta.get("data"):
            data.add(str(meta["data"]))
    return rows, models, data


def _download(repo_id: str, hookpoint: str | None, revision: str | None, cache_dir: Any) -> Path:
    if not is_hub_id(repo_id):
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hugging Face repo id (owner/name)"
        )
    fetch = {"what": "SAE", "revision": revision, "cache_dir": cache_dir}
    if not hookpoint:
        return snapshot(repo_id, **fetch)
    root = snapshot(repo_id, allow_patterns=hub_patterns(hookpoint), **fetch)
    if (root / hookpoint).is_dir() or unbox_hookpoints(root):
        return root
    # A repo that is one SAE, its files at the root (SAEmnesia): fetch those files only.
    return snapshot(repo_id, allow_patterns=list(ROOT_FILES), **fetch)
