"""Data-parallel training under torchrun: which process this is, and sums across processes.

Started by `torchrun` (or `python -m torch.distributed.run`), each process reads RANK,
WORLD_SIZE and LOCAL_RANK from its environment; started plainly it is a world of one, where
every operation here is a no-op. CPUs talk over gloo, GPUs over NCCL.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """The processes training together; rank 0 writes checkpoints, metrics and events."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process is the one that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    def device(self) -> Any:
        """This process's device: its own GPU when there are GPUs, else the CPU."""
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of `values` over every process (one collective call)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device())
        if tensor.device.type == "cuda":  # NCCL has no float64 on some GPUs; sums stay exact
            tensor = tensor.float()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(value) for value in tensor.tolist()]

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true in any process, so that every process takes the same branch."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def join_world() -> World:
    """Join the process group described by torchrun's environment, or return a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    world = World(
        rank=int(os.environ["RANK"]),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    logger.info("process %d of %d joined (%s)", world.rank, world.size, dist.get_backend())
    return world


def leave_world(world: World) -> None:
    """Tear the process group down at the end of a run."""
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
