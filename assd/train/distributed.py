"""Process-group setup for ``torchrun`` (single or multi node) and the few collectives training needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; with
``WORLD_SIZE > 1`` we join the group (NCCL on GPUs, gloo on CPUs) and every process drives one device
(``cuda:LOCAL_RANK``). Without those variables training is a plain single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from assd.errors import UserError

# Rank 0 evaluates alone while the others wait at a barrier: allow for a long validation pass.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we initialized the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _resolve_device(requested: str | None, local_rank: int, distributed: bool) -> torch.device:
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {kind}: no CUDA GPU is visible here: use --device cpu")
        if distributed or kind == "cuda":
            return torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        return torch.device(kind)
    if kind != "cpu":
        raise UserError(f"--device {kind}: use cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(requested_device: str | None = None) -> DistContext:
    """Join the ``torchrun`` process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(requested_device, local_rank, world_size > 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
        owns_group = True
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       owns_group=owns_group)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def average(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over all processes (a copy; the input is unchanged)."""
    values = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def broadcast_from_main(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every process (pickled; meant for small or one-off payloads)."""
    if not ctx.distributed:
        return obj
    payload = [obj if ctx.is_main else None]
    dist.broadcast_object_list(payload, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return payload[0]
