"""Training a BatchTopK SAE on captured activations (docs/method.md, section 2).

    loss = FVU + auxk_alpha * AuxK      # AuxK: latents silent for ``dead_tokens`` tokens
    Adam(lr), linear decay to 0, no warm-up, grad-clip, unit-norm decoder rows

Activations stream from an :class:`~saeuron.training.shards.ActivationShards` folder (a local
path or an fsspec URL), at most ``shuffle_shards`` shards in memory, shuffled within that
buffer. After every epoch the SAE is written to ``out/<hookpoint>/`` (sparsify layout)
together with the trainer's state, so a killed run started again with the same config
resumes from its last finished epoch and ends with the same weights as an uninterrupted one.

Under ``accelerate launch --num_processes N`` the processes split the work like
data-parallel training, without copying the data: the batches are the ones a single process
would draw (the shuffle depends on the seed alone), and each process holds only the tokens of
the shards it reads, the ``i``-th shard of each epoch's order going to process ``i mod N``.
Each process computes its share of each batch's loss (normalised by the whole batch's
variance, BatchTopK thresholded over the whole batch); the gradients are summed over the
processes, so every process takes the same optimiser step. ``batch_size`` stays the global
batch. The main process writes the checkpoints; every process reads them to resume, so OUT
must be a folder they all see. A run resumes under any number of processes.

Files under ``out/<hookpoint>/``::

    cfg.json, sae.safetensors, saeuron.json   # the SAE (Sae.load_from_disk reads them)
    train_log.json                            # per epoch: train/held-out FVU, dead latents, ...
    trainer/state.json                        # step, epoch, counters, log: the commit marker
    trainer/state-epoch0003.safetensors       # SAE + Adam tensors of that epoch
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from saeuron.sae import ForwardOutput, Sae
from saeuron.training.distributed import Processes, all_gather_rows, processes_for
from saeuron.training.shards import ActivationShards, ShardInfo
from saeuron.training.sparse_step import sparse_forward
from saeuron.training.train_config import TOPK_MODES, TrainConfig
from saeuron.utils.config import ConfigError
from saeuron.utils.files import TRAIN_LOG, TRAINER_STATE, TRAINER_STATE_DIR
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors
from saeuron.utils.locks import FolderLock
from saeuron.utils.storage import is_url

# The settings are re-exported from the torch-free module that --help reads.
__all__ = [
    "STATE_DIR",
    "STATE_FILE",
    "STATE_VERSION",
    "TOPK_MODES",
    "TrainConfig",
    "Trainer",
    "geometric_median",
    "train_sae",
]

logger = logging.getLogger(__name__)

STATE_DIR = TRAINER_STATE_DIR
STATE_FILE = TRAINER_STATE
STATE_VERSION = 1
# Fields that change the trained weights: a resumed run must agree on all of them.
_RESULT_FIELDS = (
    "k", "expansion_factor", "num_latents", "lr", "batch_size", "epochs", "auxk_alpha",
    "dead_tokens", "grad_clip", "heldout_fraction", "seed", "shuffle_shards",
)
_POSTFIX_EVERY = 20  # steps between progress-bar postfix updates (each one syncs the device)


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld iterations for the point minimising the summed distance to ``points`` [N, d].

    Starts from the mean; a distance floor keeps the weights finite when an iterate lands on
    a data point (where the median often is), at the cost of stopping within ~1e-8 of it.
    """
    points = points.float()
    guess = points.mean(dim=0)
    floor = 1e-8 * (1.0 + float(points.abs().max()))
    for _ in range(max_iter):
        weights = 1.0 / (points - guess).norm(dim=1).clamp_min(floor)
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        shift = float((new - guess).norm())
        guess = new
        if shift <= tol * (1.0 + float(guess.norm())):
            break
    return guess


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's shuffle derives from (seed, epoch) alone, so resuming at an epoch
    # boundary needs no saved RNG state and replays exactly the same batches.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """One SAE, one capture folder; :meth:`train` runs (or resumes) the whole schedule.

    ``processes`` is this process's place in a multi-process run; by default the one
    ``accelerate launch`` set up, or a single process.
    """

    def __init__(self, cfg: TrainConfig, processes: Processes | None = None):
        self.cfg = cfg
        self.procs = processes if processes is not None else processes_for(cfg.device)
        self.distributed = self.procs.world_size > 1
        if self.distributed and cfg.sae.input_unit_norm:
            raise ConfigError(
                "input_unit_norm", "trains on one process only (the paper's SAE has none)"
            )
        self.data = ActivationShards(cfg.activations)
        manifest = self.data.manifest
        hookpoint = manifest.get("hookpoint")
        if not hookpoint:
            raise ValueError(f"{self.data.folder}/manifest.json names no hookpoint")
        self.hookpoint = str(hookpoint)
        self.out_dir = Path(cfg.out) / self.hookpoint
        self.state_dir = self.out_dir / STATE_DIR
        self.device = self.procs.device

        self.train_shards, self.heldout_shards = self.data.split(cfg.heldout_fraction)
        if not self.heldout_shards:
            self.heldout_note = (
                "capture has 1 shard: no held-out evaluation"
                if len(self.data.shards) < 2
                else "heldout_fraction is 0: no held-out evaluation"
            )
            if self.procs.is_main:
                logger.warning("%s: %s", self.hookpoint, self.heldout_note)
        else:
            self.heldout_note = None
        self.n_train = sum(s.n_tokens for s in self.train_shards)
        if self.n_train == 0:
            raise ValueError(f"{self.data.folder}: the training shards hold no tokens")
        # A capture smaller than one batch still trains, with the whole set as the batch.
        self.batch_size = min(cfg.batch_size, self.n_train)
        self.steps_per_epoch = self.n_train // self.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        dropped = self.n_train - self.steps_per_epoch * self.batch_size
        if dropped and self.procs.is_main:
            logger.info(
                "%s: %d of %d training tokens left out of each epoch (a different random "
                "remainder each epoch) to keep batches at %d tokens",
                self.hookpoint, dropped, self.n_train, self.batch_size,
            )

        sae_cfg = cfg.sae.with_width(self.data.d_in).replace(batch_topk=cfg.topk == "batch")
        # Initialise on the CPU under a private RNG: the same seed gives the same SAE on every
        # device, and the caller's global RNG is left alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            sae = Sae(sae_cfg, dtype=torch.float32)
        self.sae = sae.to(self.device)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr)

        self.step_count = 0
        """Optimiser steps taken so far (over all epochs)."""
        self.epochs_done = 0
        self.tokens_seen = 0
        self.tokens_since_fired = torch.zeros(
            sae_cfg.num_latents, dtype=torch.long, device=self.device
        )
        """Per latent: tokens since it was last among the active ones (dead when >= dead_tokens)."""
        self.first_batch_fvu: float | None = None
        self.log: list[dict[str, Any]] = []

    # -- data -------------------------------------------------------------------------------

    def _load_shard(self, shard: ShardInfo) -> Tensor:
        x = self.data.load(shard)
        if x.ndim != 2 or x.shape[1] != self.data.d_in:
            raise ValueError(
                f"{shard.path}: activations have shape {tuple(x.shape)}, "
                f"manifest says d_in={self.data.d_in}"
            )
        # A NaN/inf token (fp16 overflow in the capture) would silently wreck the SAE.
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{shard.path}: activations contain NaN or inf")
        return x

    def iter_batches(self, epoch: int) -> Iterator[Tensor]:
        """This epoch's ``steps_per_epoch`` batches (on the CPU, in the capture's dtype).

        Shards are visited in a seeded random order, ``shuffle_shards`` at a time; the tokens
        of those shards (plus the remainder of the previous group) are shuffled together.
        Under several processes every process draws the same shuffle but holds only the
        tokens of its shards (the ``i``-th of the epoch's order goes to process ``i mod N``)
        and of its remainder, and yields its share of each batch, in the batch's order: the
        processes' shares together are exactly the one-process batch.
        """
        gen = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch))
        order = torch.randperm(len(self.train_shards), generator=gen).tolist()
        rank, world = self.procs.rank, self.procs.world_size
        group_size = self.cfg.shuffle_shards
        batch = self.batch_size
        d_in = self.data.d_in
        dtype: torch.dtype | None = None
        # The remainder carried into the next group: this process's rows of it, and their
        # positions in the whole remainder (the group's first positions).
        carry: Tensor | None = None
        carry_pos = torch.empty(0, dtype=torch.long)
        n_carry = 0
        emitted = 0
        for start in range(0, len(order), group_size):
            group = [self.train_shards[i] for i in order[start : start + group_size]]
            starts = [n_carry]
            for shard in group:
                starts.append(starts[-1] + shard.n_tokens)
            total = starts[-1]
            # Shard start + j of the epoch's order is process (start + j) mod N's: shares of
            # the reading stay even whatever shuffle_shards is.
            mine = [j for j in range(len(group)) if (start + j) % world == rank]
            n_local = len(carry_pos) + sum(group[j].n_tokens for j in mine)
            # Where each of the group's positions lives in this process's buffer (-1: in
            # another process). One buffer filled shard by shard: memory peaks at the buffer
            # plus one shard being read, never two copies of the group.
            local = torch.full((total,), -1, dtype=torch.long)
            local[carry_pos] = torch.arange(len(carry_pos))
            buf: Tensor | None = None
            offset = 0
            if carry is not None:
                buf = carry.new_empty(n_local, d_in)
                buf[: len(carry_pos)] = carry
                offset = len(carry_pos)
            carry = None
            for j in mine:
                x = self._load_shard(group[j])
                if buf is None:
                    buf = x.new_empty(n_local, d_in)
                buf[offset : offset + x.shape[0]] = x
                local[starts[j] : starts[j + 1]] = torch.arange(offset, offset + x.shape[0])
                offset += x.shape[0]
                del x
            if buf is None:
                # This process holds nothing of this group: empty shares, the right dtype.
                dtype = dtype or self.data.dtype
                buf = torch.empty(0, d_in, dtype=dtype)
            dtype = buf.dtype
            assert offset == n_local
            perm = torch.randperm(total, generator=gen)
            n_full = total // batch * batch
            for i in range(0, n_full, batch):
                if emitted == self.steps_per_epoch:
                    return
                rows = local[perm[i : i + batch]]
                yield buf[rows[rows >= 0]] if world > 1 else buf[rows]
                emitted += 1
            rest = local[perm[n_full:]]
            held = rest >= 0
            carry = buf[rest[held]] if bool(held.any()) else None
            carry_pos = torch.arange(len(rest))[held] if carry is not None else carry_pos[:0]
            n_carry = len(rest)
            del buf
        if emitted != self.steps_per_epoch:  # pragma: no cover - guarded by the arithmetic
            raise RuntimeError(f"epoch yielded {emitted} batches, expected {self.steps_per_epoch}")

    # -- one step ---------------------------------------------------------------------------

    @torch.no_grad()
    def init_b_dec(self, x: Tensor) -> None:
        """``b_dec`` <- geometric median of ``x`` (the first batch), as the paper does."""
        x = x.to(self.device, torch.float32)
        if self.distributed:
            x = torch.cat(all_gather_rows(self.procs, x))
        self.sae.b_dec.data.copy_(geometric_median(x))

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * (1.0 - step / self.total_steps)

    def step(self, x: Tensor) -> ForwardOutput:
        """One optimiser step on a batch ``[tokens, d_in]``; returns the forward output.

        Under several processes ``x`` is this process's share of a :meth:`iter_batches`
        batch, every process calls this together, and the returned ``fvu`` and ``auxk_loss``
        are this process's shares of the batch's.
        """
        x = x.to(self.device, non_blocking=True).float()
        if self.step_count == 0:
            self.init_b_dec(x)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)

        dead_mask = self.tokens_since_fired >= self.cfg.dead_tokens
        if self.sae.cfg.input_unit_norm:
            out = self.sae(x, dead_mask=dead_mask, batch_topk=self.cfg.topk == "batch")
        else:
            out = sparse_forward(
                self.sae, x, dead_mask, per_token=self.cfg.topk == "token",
                group=self.procs if self.distributed else None,
            )
        loss = out.fvu + self.cfg.auxk_alpha * out.auxk_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.distributed:
            self._sum_gradients()
        # Only the direction of decoder rows may change; their norm is pinned to 1 below.
        self.sae.remove_gradient_parallel_to_decoder_directions()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.sae.set_decoder_norm_to_unit_norm()

        # The trainer's batches hold batch_size tokens over all processes.
        n_tokens = self.batch_size if self.distributed else x.shape[0]
        with torch.no_grad():
            # BatchTopK pads tokens with zero activations: only positive ones count as firing.
            # A scatter-add keeps this free of host syncs.
            hits = torch.zeros_like(self.tokens_since_fired).scatter_add_(
                0, out.latent_indices.flatten(), (out.latent_acts > 0).flatten().long()
            )
            if self.distributed:
                self.procs.all_reduce_(hits)
            self.tokens_since_fired += n_tokens
            self.tokens_since_fired.masked_fill_(hits > 0, 0)
        self.step_count += 1
        self.tokens_seen += n_tokens
        return out

    @torch.no_grad()
    def _sum_gradients(self) -> None:
        """Sum every parameter's gradient over the processes, in one collective."""
        params = list(self.sae.parameters())
        grads = [
            p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten()
            for p in params
        ]
        flat = self.procs.all_reduce_(torch.cat(grads))
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _global_sum(self, value: Tensor) -> Tensor:
        """A per-process share summed over the processes (every process must call this)."""
        if not self.distributed:
            return value
        return self.procs.all_reduce_(value.detach().clone().reshape(1))[0]

    def num_dead(self) -> int:
        return int((self.tokens_since_fired >= self.cfg.dead_tokens).sum())

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, shards: list[ShardInfo]) -> float | None:
        """FVU over all tokens of ``shards`` with per-token TopK (the inference encoding).

        The FVU of the whole set, not a mean of per-batch FVUs: per-batch centred sums are
        merged in float64 on the CPU (Chan et al.), which avoids the cancellation of
        sum(x^2) - n mean^2 and works on devices without float64 (MPS). Under several
        processes each reads every N-th shard and the processes' sums are merged likewise.
        """
        if not shards:
            return None
        sq_err, n, mean, m2 = 0.0, 0, torch.zeros(self.data.d_in, dtype=torch.float64), 0.0
        mine = shards[self.procs.rank :: self.procs.world_size]
        for shard in mine:
            acts = self._load_shard(shard)
            for i in range(0, acts.shape[0], self.cfg.batch_size):
                x = acts[i : i + self.cfg.batch_size].to(self.device).float()
                sq_err += float((x - self.sae(x).sae_out).pow(2).sum())
                n, mean, m2 = _merge(n, mean, m2, x.shape[0], x.mean(dim=0).cpu().double(),
                                     float((x - x.mean(dim=0)).pow(2).sum()))
        if self.distributed:
            stats = torch.cat([torch.tensor([sq_err, float(n), m2], dtype=torch.float64), mean])
            parts = self.procs.all_gather(stats.to(self.device)).cpu()
            sq_err, n, mean, m2 = 0.0, 0, torch.zeros_like(mean), 0.0
            for part in parts:
                sq_err += float(part[0])
                n, mean, m2 = _merge(n, mean, m2, int(part[1]), part[3:], float(part[2]))
        return sq_err / max(m2, float(np.finfo(np.float64).tiny))

    # -- training loop ----------------------------------------------------------------------

    def train(self) -> Sae:
        """Run the remaining epochs, checkpointing after each; returns the trained SAE.

        The main process holds the SAE's folder for the whole run: a second training into
        it is refused at once, naming this one, rather than interleaving checkpoints."""
        with contextlib.ExitStack() as held:
            if self.procs.is_main:
                held.enter_context(FolderLock(self.out_dir))
            return self._train()

    def _train(self) -> Sae:
        if self.cfg.resume and (self.state_dir / STATE_FILE).is_file():
            self.load_state()
        elif (self.state_dir / STATE_FILE).is_file() and self.procs.is_main:
            logger.warning("%s: resume is off; starting over in %s", self.hookpoint, self.out_dir)
        if self.epochs_done >= self.cfg.epochs:
            if self.procs.is_main:
                logger.info("%s: all %d epochs already done", self.hookpoint, self.cfg.epochs)
            return self.sae

        if self.procs.is_main:
            logger.info(
                "%s: training %d latents (k=%d) on %d tokens x %d epochs (%d steps of %d) on "
                "%s%s",
                self.hookpoint, self.sae.num_latents, self.cfg.sae.k, self.n_train,
                self.cfg.epochs, self.total_steps, self.batch_size, self.device,
                f" x {self.procs.world_size} processes" if self.distributed else "",
            )
        bar = tqdm(
            total=self.total_steps * self.batch_size,
            initial=self.step_count * self.batch_size,
            unit="tok",
            unit_scale=True,
            desc=f"train {self.hookpoint}",
            dynamic_ncols=True,
            disable=not self.procs.is_main,
        )
        try:
            for epoch in range(self.epochs_done, self.cfg.epochs):
                self._train_epoch(epoch, bar)
        except KeyboardInterrupt:
            logger.warning(
                "%s: interrupted; the same command resumes after epoch %d",
                self.hookpoint, self.epochs_done,
            )
            raise
        finally:
            bar.close()
        # Every process returns once the main one has written the last checkpoint.
        self.procs.barrier()
        return self.sae

    def _train_epoch(self, epoch: int, bar: tqdm) -> None:
        start = time.perf_counter()
        fvu_sum = torch.zeros((), device=self.device)
        fvu_window = torch.zeros((), device=self.device)
        for i, x in enumerate(self.iter_batches(epoch)):
            out = self.step(x)
            fvu = out.fvu.detach()
            if self.first_batch_fvu is None:
                self.first_batch_fvu = float(self._global_sum(fvu))
            fvu_sum += fvu
            fvu_window += fvu
            bar.update(self.batch_size)
            if (i + 1) % _POSTFIX_EVERY == 0 or i + 1 == self.steps_per_epoch:
                n = (i % _POSTFIX_EVERY) + 1
                window = float(self._global_sum(fvu_window)) / n
                bar.set_postfix(
                    epoch=epoch + 1, fvu=f"{window:.4f}", dead=self.num_dead(), refresh=False
                )
                fvu_window.zero_()
        train_fvu = float(self._global_sum(fvu_sum)) / self.steps_per_epoch
        heldout_fvu = self.evaluate(self.heldout_shards)
        self.epochs_done = epoch + 1
        seconds = time.perf_counter() - start
        record = {
            "epoch": self.epochs_done,
            "train_fvu": train_fvu,
            "heldout_fvu": heldout_fvu,
            "dead_latents": self.num_dead(),
            "tokens": self.steps_per_epoch * self.batch_size,
            "tokens_total": self.tokens_seen,
            "steps_total": self.step_count,
            "seconds": seconds,
            "processes": self.procs.world_size,
        }
        self.log.append(record)
        if self.procs.is_main:
            heldout = "n/a" if heldout_fvu is None else f"{heldout_fvu:.4f}"
            logger.info(
                "%s: epoch %d/%d train FVU %.4f, held-out FVU %s, %d dead latents, %.1f s "
                "(%.0f tokens/s)",
                self.hookpoint, self.epochs_done, self.cfg.epochs, train_fvu, heldout,
                record["dead_latents"], seconds, record["tokens"] / max(seconds, 1e-9),
            )
            self.save()

    # -- checkpoints ------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        """What the data looked like; resuming on different data would not replay the run."""
        return {
            "hookpoint": self.hookpoint,
            "d_in": self.data.d_in,
            "shards": [[s.index, s.n_tokens] for s in self.data.shards],
        }

    def _meta(self) -> dict[str, Any]:
        manifest = self.data.manifest
        meta: dict[str, Any] = {
            key: manifest[key] for key in ("hookpoint", "model", "d_in", "activation_site")
            if key in manifest
        }
        last = self.log[-1] if self.log else {}
        meta["training"] = {
            "epochs_done": self.epochs_done,
            "epochs": self.cfg.epochs,
            "steps": self.step_count,
            "tokens": self.tokens_seen,
            "train_fvu": last.get("train_fvu"),
            "heldout_fvu": last.get("heldout_fvu"),
            "dead_latents": last.get("dead_latents"),
            "first_batch_fvu": self.first_batch_fvu,
            "config": {k: v for k, v in self.cfg.to_dict().items() if k != "resume"},
        }
        return meta

    def _train_log(self) -> dict[str, Any]:
        return {
            "hookpoint": self.hookpoint,
            "activations": self.cfg.activations if is_url(self.cfg.activations)
            else str(Path(self.cfg.activations).resolve()),
            "train_tokens": self.n_train,
            "heldout_tokens": sum(s.n_tokens for s in self.heldout_shards),
            "heldout_shards": [s.index for s in self.heldout_shards],
            "heldout_note": self.heldout_note,
            "heldout_fvu_encoding": "per-token TopK (as at inference), over the whole set",
            "train_fvu_encoding": "BatchTopK (as in training), mean over the epoch's batches",
            "first_batch_fvu": self.first_batch_fvu,
            "epochs": self.log,
        }

    def save(self) -> None:
        """Checkpoint the finished epoch: trainer state first, then the exported SAE.

        The tensors go to a file named after the epoch and ``state.json`` (written last, and
        atomically) points at it, so a kill at any moment leaves a consistent checkpoint.
        """
        name = f"state-epoch{self.epochs_done:04d}.safetensors"
        tensors = {f"sae.{k}": v for k, v in self.sae.state_for_disk().items()}
        optim = self.optimizer.state_dict()
        for idx, slots in optim["state"].items():
            for key, value in slots.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        atomic_write_safetensors(self.state_dir / name, tensors)
        state = {
            "version": STATE_VERSION,
            "epochs_done": self.epochs_done,
            "step": self.step_count,
            "tokens_seen": self.tokens_seen,
            "tensors": name,
            "rng": {
                "scheme": "epoch e shuffles with SeedSequence([seed, e]); init with seed",
                "seed": self.cfg.seed,
            },
            "tokens_since_fired": self.tokens_since_fired.tolist(),
            "first_batch_fvu": self.first_batch_fvu,
            "config": self.cfg.to_dict(),
            "data": self._fingerprint(),
            "log": self.log,
        }
        atomic_write_json(self.state_dir / STATE_FILE, state)
        for old in self.state_dir.glob("state-epoch*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self.export()

    def export(self) -> Path:
        """Write the SAE (sparsify layout + saeuron.json) and ``train_log.json``."""
        self.sae.meta = self._meta()
        self.sae.save_to_disk(self.out_dir)
        atomic_write_json(self.out_dir / TRAIN_LOG, self._train_log())
        return self.out_dir

    def load_state(self) -> None:
        """Continue from ``trainer/state.json``; refuses a checkpoint of a different run."""
        path = self.state_dir / STATE_FILE
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unknown trainer state version {state.get('version')!r}")
        saved = state["config"]
        now = self.cfg.to_dict()
        for name in _RESULT_FIELDS:
            if saved.get(name) != now[name]:
                raise ConfigError(
                    name,
                    f"got {now[name]!r} but the run in {self.out_dir} used "
                    f"{saved.get(name)!r}; keep the value, pass --no-resume, or use another --out",
                )
        if state["data"] != self._fingerprint():
            raise ConfigError(
                "activations",
                f"{self.cfg.activations} differs from the capture the run in {self.out_dir} "
                "was trained on; pass --no-resume or use another --out",
            )

        tensors_path = self.state_dir / state["tensors"]
        # Read on the CPU; load_state_dict moves tensors to the parameters' device.
        with safe_open(str(tensors_path), framework="pt", device="cpu") as fh:
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        self.sae.load_state_dict(
            {k.removeprefix("sae."): v for k, v in tensors.items() if k.startswith("sae.")}
        )
        optim_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, slot = key.split(".", 2)
                optim_state.setdefault(int(idx), {})[slot] = value
        # Hyper-parameters come from the (checked) config; only Adam's moments are restored.
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        counters = torch.tensor(state["tokens_since_fired"], dtype=torch.long)
        if counters.shape != self.tokens_since_fired.shape:
            raise ValueError(f"{path}: tokens_since_fired has {counters.numel()} entries")
        self.tokens_since_fired.copy_(counters)
        self.epochs_done = int(state["epochs_done"])
        self.step_count = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.first_batch_fvu = state["first_batch_fvu"]
        self.log = list(state["log"])
        logger.info(
            "%s: resuming after epoch %d/%d (step %d) from %s",
            self.hookpoint, self.epochs_done, self.cfg.epochs, self.step_count, tensors_path,
        )
        # The export may lag the state if the last run died between the two writes.
        if self.procs.is_main:
            self.export()


def _merge(
    n: int, mean: Tensor, m2: float, n_b: int, mean_b: Tensor, m2_b: float
) -> tuple[int, Tensor, float]:
    """Count, mean and centred sum of two sets from each one's (Chan et al.)."""
    total = n + n_b
    if total == 0:
        return 0, mean, m2
    delta = mean_b - mean
    m2 += m2_b + float(delta.pow(2).sum()) * n * n_b / total
    return total, mean + delta * (n_b / total), m2


def train_sae(cfg: TrainConfig) -> Sae:
    """Train (or resume) the SAE described by ``cfg``; it is also saved to ``out/<hookpoint>``."""
    return Trainer(cfg).train()
