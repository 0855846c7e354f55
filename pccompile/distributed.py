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
BatchNorm: :func:`global_batchnorm` swaps ``nn.BatchNorm*d`` for :class:`GlobalBatchNorm`, whose
training-mode statistics are the global batch's on any backend (``nn.SyncBatchNorm`` runs on CUDA
only); convert with ``leaf_modules=[GlobalBatchNorm]`` so it stays one vertex.
Not done: overlapping the all-reduce with the level-by-level schedule (it starts after ``learn``
returns; see docs/train.md).
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
    "GlobalBatchNorm",
    "global_batchnorm",
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


def all_mean(value: float, group: Any = None, device: Any = "cpu") -> float:
    """The mean of a float over the ranks (itself without a process group); ``device``: where
    the backend reduces (a CUDA device for nccl)."""
    if not _active(group):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its backward sums the cotangents over the ranks (every rank's output
    depends on every rank's input)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are the global batch's: summed over the ranks
    with a differentiable all-reduce (so its backward all-reduces too), on any backend (gloo on
    CPU, where ``nn.SyncBatchNorm`` does not run). With one process, or in eval mode, it is
    ``nn.BatchNorm*d`` exactly. Convert a model's BatchNorm layers with :func:`global_batchnorm`.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        local = x.numel() // x.shape[1]
        count = torch.tensor([float(local)], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        total = int(count.item())
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = _AllReduceSum.apply(x.sum(dims)) / total
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / total
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (total / max(total - 1, 1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` (in place; the root is returned,
    replaced if it is one) by a :class:`GlobalBatchNorm` with the same parameters, buffers and
    state-dict keys."""
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module
