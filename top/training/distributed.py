"""Data parallel under torchrun: the process group, gradient sums and gathers over ranks."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Sequence

import torch


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """All-reduce (sum) gradients; each rank's loss is already weighted by its share."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``value``, differentiable in this rank's own term only."""
        if not self.enabled:
            return value
        parts = [torch.zeros_like(value) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, value.detach())
        total = value
        for rank, part in enumerate(parts):
            if rank != self.rank:
                total = total + part
        return total

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device_name == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device_name == "cuda":
        torch.cuda.set_device(local_rank)
    return Distributed(rank, world_size, local_rank)


def teardown_distributed(dist: Distributed) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
