"""Data-parallel PC training on ``torch.distributed``.

``PCModule.learn`` writes ``p.grad`` without ``backward()``, so ``DistributedDataParallel``'s
gradient hooks never fire: wrapped in DDP, ranks would silently drift apart. This module does
DDP's part by hand, after ``learn``:

    dp = pccompile.distributed.DataParallel(pcm)        # broadcasts rank 0's weights
    for x, y in global_batches:                         # the same global batches on every rank
        opt.zero_grad()
        dp.learn(dp.shard(x), target=dp.shard(y), loss_fn=F.cross_entropy)   # + all-reduce
        opt.step()

Reads: the process group (``torch.distributed``; nothing happens without one, or with one rank).
Writes: ``p.grad`` (averaged over ranks, in place) and the module's buffers (broadcast from rank
0, as DDP's ``broadcast_buffers`` does).
Invariants: every rank calls the same collectives in the same order (the same model, the same
number of steps); gradients are averaged in buckets of at most ``bucket_mb`` MiB per dtype, so
the mean over ranks of per-rank means over equal shards is the global batch's mean gradient.
Not done: overlapping the all-reduce with the level-by-level schedule (it starts after ``learn``
returns), and synchronised BatchNorm batch statistics (see docs/train.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "rank",
    "world_size",
    "is_main",
    "init_from_env",
    "all_reduce_grads",
    "broadcast_state",
    "all_mean",
    "DataParallel",
]

BUCKET_MB = 25


def _active(group: Any = None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group: Any = None) -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main(group: Any = None) -> bool:
    """True on rank 0 (and without a process group): the rank that writes outputs."""
    return rank(group) == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    gloo on CPU, nccl with CUDA unless ``backend`` says. Returns True when it initialised one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    return True


def all_reduce_grads(
    params: Iterable[nn.Parameter], group: Any = None, bucket_mb: float = BUCKET_MB
) -> None:
    """Average ``p.grad`` over the ranks, in place, in flat buckets (one all-reduce each).

    Parameters whose ``.grad`` is None are skipped (the same on every rank: one model)."""
    if not _active(group):
        return
    n = dist.get_world_size(group)
    grads = [p.grad for p in params if p.grad is not None]
    limit = int(bucket_mb * 2**20)
    buckets: list[list[torch.Tensor]] = []
    size: dict[tuple, int] = {}
    open_bucket: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        key = (g.dtype, g.device)
        if key not in open_bucket or size[key] + g.numel() * g.element_size() > limit:
            open_bucket[key], size[key] = [], 0
            buckets.append(open_bucket[key])
        open_bucket[key].append(g)
        size[key] += g.numel() * g.element_size()
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        flat.div_(n)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_state(module: nn.Module, src: int = 0, group: Any = None, buffers_only=False) -> None:
    """Copy rank ``src``'s parameters (unless ``buffers_only``) and buffers to every rank."""
    if not _active(group):
        return
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src, group=group)


def all_mean(value: float, group: Any = None) -> float:
    """The mean of a float over the ranks (itself without a process group)."""
    if not _active(group):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t) / dist.get_world_size(group)


class DataParallel:
    """Data-parallel ``learn`` for a :class:`pccompile.PCModule` (or plain ``backward`` for an
    ``nn.Module`` with :meth:`sync`): each rank learns on its shard of the global batch, then
    gradients are averaged and buffers broadcast from rank 0.

    Args:
        module: the converted module (its parameters are the original model's).
        group: the process group (default: the world).
        bucket_mb: the all-reduce bucket size.
        broadcast_buffers: after each step, copy rank 0's buffers (BatchNorm running
            statistics) to every rank, as DDP does by default.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        group: Any = None,
        bucket_mb: float = BUCKET_MB,
        broadcast_buffers: bool = True,
    ):
        self.module, self.group, self.bucket_mb = module, group, bucket_mb
        self.broadcast_buffers = broadcast_buffers
        broadcast_state(module, 0, group)  # one starting point on every rank

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's equal slice of a global batch (its size must divide by the world size)."""
        n, r = world_size(self.group), rank(self.group)
        if len(batch) % n:
            raise ValueError(f"a global batch of {len(batch)} does not split over {n} ranks.")
        k = len(batch) // n
        return batch[r * k : (r + 1) * k]

    def learn(self, *inputs: Any, **kwargs: Any) -> Any:
        """``module.learn`` on this rank's inputs, then :meth:`sync`."""
        report = self.module.learn(*inputs, **kwargs)
        self.sync()
        return report

    def sync(self) -> None:
        """Average the gradients over ranks; broadcast rank 0's buffers."""
        all_reduce_grads(self.module.parameters(), self.group, self.bucket_mb)
        if self.broadcast_buffers:
            broadcast_state(self.module, 0, self.group, buffers_only=True)
