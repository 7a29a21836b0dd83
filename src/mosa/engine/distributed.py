"""Process-group set-up for runs launched by ``torchrun`` and small collective helpers.

A single process is the world-size-1 case of the same code, so the trainer never branches on
"distributed or not" except where PyTorch requires it (wrapping in DDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: no process group (single process)
    owns_group: bool  # True when this module created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} but CUDA is not available; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``), else run alone.

    The backend is NCCL for CUDA devices and Gloo for CPU. A group that already exists (a
    caller set it up) is reused and left for the caller to destroy.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, 0, resolve_device(device), None, False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        owns = True
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(), owns
    )


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few Python numbers over all ranks (float64, so counts stay exact)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_equal(value: int, info: DistInfo) -> bool:
    """True when every rank passed the same integer (e.g. a checksum of routing states)."""
    if not info.distributed:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # max(v) == -max(-v) == min(v) iff all equal
    return int(t[0]) == -int(t[1])


def any_true(flag: bool, info: DistInfo) -> bool:
    """True on every rank when at least one rank passed True."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def _comm_device(info: DistInfo) -> torch.device:
    # NCCL only reduces CUDA tensors; Gloo reduces CPU tensors.
    return info.device if info.backend == "nccl" else torch.device("cpu")
