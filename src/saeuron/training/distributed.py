"""The processes of one run under ``accelerate launch``, and the collectives training needs.

Capture and training run as one process or as every process that ``accelerate launch``
(torchrun underneath) starts: on GPUs one per device over NCCL, on CPUs over gloo
(``CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes N``; accelerate's
``--cpu`` starts a single process). :func:`processes_for` says which process this is;
:class:`Processes` has the three collectives the SAE trainer uses (``all_gather`` of
equal-shaped tensors, a summing ``all_reduce_``, ``barrier``) and :func:`all_gather_rows`
builds the ragged gather on them. A single process is the same interface doing nothing, so
the trainer has one code path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch import Tensor

from saeuron.utils.devices import resolve_device


def launched_processes() -> int:
    """How many processes the launcher started; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def use_cpu_group(device: str | None) -> bool:
    """Whether several launched processes form a CPU (gloo) group rather than a GPU one.

    PartialState forms a CPU group only when told it runs on the CPU; ``accelerate launch
    --cpu`` says so through the environment, a CPU-only machine does not.
    """
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return resolve_device(device).type == "cpu"


class Processes:
    """This process's place among the run's processes: one process, doing nothing."""

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1):
        self.device = device
        self.rank = rank
        self.world_size = world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, tensor: Tensor) -> Tensor:
        """``[world_size, *tensor.shape]``: every process's tensor (same shape on each)."""
        return tensor[None]

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place; returns it."""
        return tensor

    def barrier(self) -> None:
        """Wait until every process gets here."""


class TorchProcesses(Processes):
    """The processes of torch.distributed's default group (set up by accelerate)."""

    def all_gather(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        dist.barrier()


def processes_for(device: str | None) -> Processes:
    """This process's :class:`Processes`, and the device it computes on.

    Launched as several processes, each owns one device (the one accelerate assigns) unless
    ``device`` names a different kind, e.g. ``cpu`` on a GPU machine.
    """
    if launched_processes() <= 1:
        return Processes(resolve_device(device))
    state = PartialState(cpu=use_cpu_group(device))
    wanted = resolve_device(device) if device else state.device
    chosen = state.device if wanted.type == state.device.type else wanted
    return TorchProcesses(chosen, state.process_index, state.num_processes)


def all_gather_rows(processes: Processes, rows: Tensor, fill: float = 0.0) -> list[Tensor]:
    """Every process's ``rows`` (``[n_p, ...]``, ``n_p`` may differ), in process order.

    Two collectives: the counts, then the rows padded to the largest count with ``fill``.
    """
    counts = processes.all_gather(torch.tensor([rows.shape[0]], device=rows.device))
    counts_list = [int(c) for c in counts.flatten().tolist()]
    width = max(counts_list)
    padded = rows.new_full((width, *rows.shape[1:]), fill)
    padded[: rows.shape[0]] = rows
    gathered = processes.all_gather(padded)
    return [gathered[p, :n] for p, n in enumerate(counts_list)]
