"""Several devices: DistributedDataParallel, one process per device, started by torchrun.

`Dist` is the little this project needs from torch.distributed: the rank, sums across ranks, and a broadcast.
With one process every method is a no-op, so the training code reads the same either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexnet.errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # nccl | gloo once in a process group (torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """In a process group: the model is wrapped in DDP and sums go through collectives. One process
        under torchrun is active too, so `--nproc_per_node=1` runs the same code as eight."""
        return self.backend is not None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor; the input is left as it is)."""
        out = tensor.clone()
        if self.active:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        if self.active:
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        return bool(self.max(torch.tensor(int(flag), device=device)).item()) if self.active else flag

    def broadcast(self, value):
        """Rank 0's value, on every rank."""
        if not self.active:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value) -> list:
        if not self.active:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def setup(strategy: str, device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up (strategy=ddp); returns this rank and its device."""
    if strategy != "ddp":
        return Dist(), device
    if "RANK" not in os.environ:
        raise ConfigError("trainer.strategy=ddp needs one process per device, started by torchrun. Fix: "
                          "torchrun --nproc_per_node=N -m alexnet.run trainer.strategy=ddp ...")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local, dist.get_backend()), device


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
