"""The process group as the training loop sees it: rank, size and the few collectives it uses.

With one process (no torchrun) every collective is a no-op, so the loop has no `if distributed` branches.
Backend: NCCL on CUDA, gloo on CPU. torchrun/accelerate set RANK, WORLD_SIZE and LOCAL_RANK.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0 (or the only process), before or without the process group: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


class World:
    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist = None
        if self.size > 1:
            import torch
            import torch.distributed as dist

            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.dist = dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor):
        """In-place sum over processes (NCCL needs the tensor on the process's GPU)."""
        if self.dist is not None:
            self.dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list:
        if self.dist is None:
            return [obj]
        out = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast_(self, tensor) -> None:
        if self.dist is not None:
            self.dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()
