"""Device selection and ``torchrun`` process groups.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process
group uses NCCL on CUDA and gloo on CPU, so multi-process runs are testable
without a GPU. Without ``torchrun`` everything degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wmdd.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: ``torchrun`` coordinates (0, 1, 0 alone).
        device: the ``torch.device`` this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's indices of ``n`` items (round-robin, no padding or duplicates)."""
        return range(self.rank, n, self.world_size)

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

        DDP keeps parameters equal across ranks but each rank's last training
        forward updates its own running statistics; call this before
        evaluating or computing statistics so that every rank uses rank 0's model.
        """
        if self.distributed:
            for buf in model.buffers():
                moved = buf.data.to(self.device)
                dist.broadcast(moved, src=0)
                buf.data.copy_(moved)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` inside DistributedDataParallel under ``torchrun``, else ``model`` itself."""
        if not self.distributed:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (on the process-group device) and return it."""
        if self.distributed:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.to(tensor.device))
        return tensor


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` -> ``cuda:<local_rank>``.

    Raises:
        UserError: ``cuda`` asked for on a machine without CUDA, or an unknown name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    raise UserError(f"--device {name!r}: expected auto, cpu or cuda")


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by ``torchrun`` and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank, world_size, local_rank, dev)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_initialized():
        dist.destroy_process_group()
