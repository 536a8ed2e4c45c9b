"""torch.distributed glue for ``torchrun``: process-group setup and the few collectives
the engine needs (agreeing on stop flags, summing losses, syncing BN buffers).

``torchrun --nproc-per-node N -m napari_4dstem_autoencoder.cli train ...`` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_from_env` reads them
(``env://``) and picks NCCL for CUDA, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> DistContext:
    """The context of an initialised process group, or a single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def backend_for(device: str) -> str:
    """NCCL when the job trains on CUDA, gloo otherwise (CPU)."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if wants_cuda and dist.is_nccl_available() else "gloo"


def init_from_env(device: str = "auto") -> DistContext:
    """Initialise the default process group from torchrun's environment (no-op if single)."""
    if env_world_size() <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, init_method="env://")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(flags: list[bool], ctx: DistContext, device: torch.device) -> list[bool]:
    """Logical OR of each flag over all ranks (so every rank stops at the same step)."""
    if not ctx.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(model: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every rank.

    DDP keeps parameters identical through gradient all-reduce, but each rank updates its
    own BN running statistics; syncing them at epoch ends makes validation, checkpoints and
    the final state identical on every rank.
    """
    if not ctx.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=src)


def broadcast_int(value: int, ctx: DistContext, device: torch.device, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every rank (a decision only one rank's clock should make)."""
    if not ctx.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=src)
    return int(t.item())
