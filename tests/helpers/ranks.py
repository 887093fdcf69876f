"""Several training processes as threads of one test: the collectives over a shared barrier.

The trainer talks to its peers only through :class:`saeuron.training.distributed.Processes`,
so N threads, each with a :class:`ThreadProcesses`, run exactly the multi-process code path
(including every collective, in the same order) without launching anything; the gloo runs
under ``accelerate launch`` are in the slow tier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from saeuron.training.distributed import Processes

TIMEOUT_S = 300.0


class _Group:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=TIMEOUT_S)
        self.slots: list[Tensor | None] = [None] * world_size
        self.collectives = 0


class ThreadProcesses(Processes):
    """One rank of a group of threads."""

    def __init__(self, group: _Group, rank: int, device: torch.device | None = None):
        super().__init__(device or torch.device("cpu"), rank, group.world_size)
        self.group = group

    def all_gather(self, tensor: Tensor) -> Tensor:
        g = self.group
        g.slots[self.rank] = tensor.detach().clone()
        g.barrier.wait()
        shapes = {tuple(t.shape) for t in g.slots if t is not None}
        assert len(shapes) == 1, f"all_gather of different shapes {shapes}"
        out = torch.stack([t for t in g.slots if t is not None])
        if self.rank == 0:
            g.collectives += 1
        g.barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return out

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        tensor.copy_(self.all_gather(tensor).sum(0))
        return tensor

    def barrier(self) -> None:
        self.group.barrier.wait()


def thread_ranks(world_size: int) -> list[ThreadProcesses]:
    group = _Group(world_size)
    return [ThreadProcesses(group, rank) for rank in range(world_size)]


def run_ranks(ranks: list[ThreadProcesses], fn: Callable[[ThreadProcesses], Any]) -> list[Any]:
    """``fn(rank)`` on every rank at once, one thread each; the results in rank order.

    A failure on one rank breaks the barrier for the others and is re-raised here.
    """
    results: list[Any] = [None] * len(ranks)
    errors: list[BaseException] = []

    def work(rank: ThreadProcesses) -> None:
        try:
            results[rank.rank] = fn(rank)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors.append(err)
            rank.group.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results
