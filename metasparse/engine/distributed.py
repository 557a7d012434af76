"""Multi-process training with ``torch.distributed`` (launched by ``torchrun``).

Every rank builds the *same* full batch of episodes (the sampler is a pure function of
``(seed, epoch, batch index)``), applies the same augmentation to it (same generator
seed) and keeps its shard ``episodes[rank * B/W : (rank + 1) * B/W]``. With the loss of
a rank the mean over its queries, DDP's gradient average equals the gradient of the
mean loss over the whole batch, so one step equals the single-process step up to float
summation order, as long as the backbone treats examples independently (no
batch-norm in training mode; use ``--sync-bn`` on GPUs for ResNet-12) and draws no
shard-dependent randomness (dropout / DropBlock masks differ per shard).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["DistContext", "init_distributed", "resolve_device", "shard_bounds", "all_reduce_mean",
           "all_reduce_sum", "all_reduce_max", "gather_objects", "barrier", "cleanup"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise ``torch.device(name)``, with a
    :class:`~metasparse.errors.ConfigError` for a name torch does not know or no CUDA."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    return dev


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistContext:
    """Single process unless launched by torchrun (``WORLD_SIZE`` > 1 in the environment).

    Backend: NCCL on CUDA, gloo on CPU. Each rank uses ``cuda:LOCAL_RANK`` on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shard_bounds(n: int, rank: int, world: int):
    """Contiguous shard ``[lo, hi)`` of ``n`` items for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _all_reduce(values: torch.Tensor, op, ctx: DistContext) -> torch.Tensor:
    """``values`` reduced with ``op`` over ranks, on the rank's device (NCCL reduces CUDA
    tensors only) and returned on the device of ``values``."""
    out = values.to(ctx.device, copy=True)
    dist.all_reduce(out, op=op)
    return out.to(values.device)


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Elementwise mean over ranks."""
    if not ctx.enabled:
        return values
    return _all_reduce(values, dist.ReduceOp.SUM, ctx) / ctx.world_size


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Elementwise sum over ranks (exact for counts)."""
    if not ctx.enabled:
        return values
    return _all_reduce(values, dist.ReduceOp.SUM, ctx)


def all_reduce_max(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Elementwise maximum over ranks."""
    if not ctx.enabled:
        return values
    return _all_reduce(values, dist.ReduceOp.MAX, ctx)


def gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    if not ctx.enabled:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
