"""Data-parallel PC training on ``torch.distributed``.

``PCModule.learn`` writes ``p.grad`` without ``backward()``, so ``DistributedDataParallel``'s
gradient hooks never fire: wrapped in DDP, ranks would silently drift apart (``DDP(pcm)`` and
``convert(DDP(model))`` are refused). This module does DDP's part for PC inference:

    dp = pccompile.distributed.DataParallel(pcm)        # broadcasts rank 0's weights
    for x, y in global_batches:                         # the same global batches on every rank
        opt.zero_grad()
        dp.learn(dp.shard(x), target=dp.shard(y), loss_fn=F.cross_entropy)   # + all-reduce
        opt.step()

Reads: the process group (``torch.distributed``; nothing happens without one, or with one rank).
Writes: ``p.grad`` (averaged over ranks, in place) and the module's buffers (broadcast from rank
0 once per synchronised step, as DDP's ``broadcast_buffers`` does).
Invariants: every rank calls the same collectives in the same order (the same model, the same
number of steps); gradients are averaged in buckets of at most ``bucket_mb`` MiB per dtype, so
the mean over ranks of per-rank means over equal shards is the global batch's mean gradient.
Under Z-IL's event-driven schedule a bucket's all-reduce is started (asynchronously) as soon as
the level that last uses its parameters has run (:data:`pccompile.rules.propagate.LEVEL_DONE`),
and waited on before ``learn`` returns. ``no_sync()`` skips the collectives of accumulation
steps; iPC moving the weights inside inference has each in-inference step's gradients averaged
(:data:`pccompile.rules.ipc.STEP_GRADS`). Sharded training: :mod:`pccompile.sharded`.
Layers whose training-mode result depends on the whole batch are swapped by
:func:`global_layers`: BatchNorm for :class:`GlobalBatchNorm` on CPU (``nn.SyncBatchNorm`` on
CUDA) and dropout for :class:`GlobalDropout`, whose masks are slices of the mask one process
draws for the global batch. Convert with ``leaf_modules=LEAF_MODULES`` so each stays one vertex.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

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
    "GlobalDropout",
    "LEAF_MODULES",
    "global_batchnorm",
    "global_dropout",
    "global_layers",
]

BUCKET_MB = 25
FIRST_BUCKET_MB = 1.0  # an overlapped bucket starts once it holds this much (DDP's first bucket)
_LEARN_ARGS = ("target", "loss_fn", "rule", "trace", "require_exact", "clamp")


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


def init_from_env(backend: str | None = None, device: str | torch.device = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment):
    nccl when ``device`` is a CUDA device, gloo otherwise, unless ``backend`` says. Returns True
    when it initialised one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if backend is None:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


def _buckets(tensors: list[torch.Tensor], bucket_mb: float) -> list[list[int]]:
    """Indices of consecutive tensors grouped per (dtype, device), at most ``bucket_mb`` MiB a
    group."""
    limit = int(bucket_mb * 2**20)
    buckets: list[list[int]] = []
    size: dict[tuple, int] = {}
    open_bucket: dict[tuple, list[int]] = {}
    for i, g in enumerate(tensors):
        key = (g.dtype, g.device)
        nbytes = g.numel() * g.element_size()
        if key not in open_bucket or size[key] + nbytes > limit:
            open_bucket[key], size[key] = [], 0
            buckets.append(open_bucket[key])
        open_bucket[key].append(i)
        size[key] += nbytes
    return buckets


def _unflatten(flat: torch.Tensor, into: list[torch.Tensor]) -> None:
    offset = 0
    for g in into:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_grads(
    params: Iterable[nn.Parameter], group: Any = None, bucket_mb: float = BUCKET_MB
) -> None:
    """Average ``p.grad`` over the ranks, in place, in flat buckets (one all-reduce each).

    Parameters whose ``.grad`` is None are skipped (the same on every rank: one model)."""
    if not _active(group):
        return
    n = dist.get_world_size(group)
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads, bucket_mb):
        flat = torch.cat([grads[i].reshape(-1) for i in bucket])
        dist.all_reduce(flat, group=group)
        flat.div_(n)
        _unflatten(flat, [grads[i] for i in bucket])


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


class _Overlap:
    """One learn step's overlapped reduction: at the end of each Z-IL level, the parameters whose
    last use is at that level have their final contribution in ``grads``; their would-be
    ``p.grad`` (the earlier ``p.grad`` plus it, what ``Grads.write`` will set) is copied into a
    flat bucket whose all-reduce starts at once (``async_op=True``). :meth:`finish`, after
    ``learn``, waits and writes the averages into ``p.grad``."""

    def __init__(
        self,
        final_at: dict[int, list[nn.Parameter]],
        group: Any,
        bucket_mb: float,
        first_bucket_mb: float,
    ):
        self.final_at, self.group, self.bucket_mb = final_at, group, bucket_mb
        self.first_bytes = first_bucket_mb * 2**20
        self.open: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.open_bytes = 0
        self.pending: list[tuple[Any, torch.Tensor, list[nn.Parameter]]] = []
        self.done: set[int] = set()  # ids of the parameters already in a started bucket
        self.early = 0  # buckets started during inference

    def __call__(self, t: int, grads: Any) -> None:
        with torch.no_grad():
            for p in self.final_at.get(t, ()):
                g = grads.params.get(p)
                if g is None:  # no update reached it: Grads.write gives zeros, reduced at the end
                    continue
                g = g.to(p.dtype) if p.grad is None else p.grad + g
                self.open.append((p, g))
                self.open_bytes += g.numel() * g.element_size()
        if self.open and self.open_bytes >= self.first_bytes:
            self.start()
            self.early = len(self.pending)

    def start(self) -> None:
        for bucket in _buckets([g for _, g in self.open], self.bucket_mb):
            params = [self.open[i][0] for i in bucket]
            flat = torch.cat([self.open[i][1].reshape(-1) for i in bucket])
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            self.pending.append((work, flat, params))
            self.done.update(id(p) for p in params)
        self.open, self.open_bytes = [], 0

    def finish(self, params: Iterable[nn.Parameter]) -> None:
        """Start what is left open, wait for every bucket, write the averages into ``p.grad``;
        then average the gradients of every parameter no level finished (reused across levels'
        ends, parameter transforms, rules without the level schedule) the plain way."""
        self.start()
        n = dist.get_world_size(self.group)
        with torch.no_grad():
            for work, flat, bucket in self.pending:
                work.wait()
                flat.div_(n)
                _unflatten(flat, [p.grad for p in bucket])
        rest = [p for p in params if id(p) not in self.done]
        all_reduce_grads(rest, self.group, self.bucket_mb)


def _final_levels(plan: Any) -> dict[int, list[nn.Parameter]]:
    """Level -> the parameters whose last direct use is at that level (under Z-IL's schedule
    their contribution is complete when it has run). Parameters behind parameter transforms
    are left out: their gradient is only formed after inference (``Grads.finish``)."""
    last: dict[int, tuple[int, nn.Parameter]] = {}
    prologue = {id(p) for p in plan.prologue_params}
    for v in plan.vertices:
        for p in v.params:
            if id(p) not in prologue and p.requires_grad:
                lvl = max(v.level, last.get(id(p), (v.level, p))[0])
                last[id(p)] = (lvl, p)
    out: dict[int, list[nn.Parameter]] = {}
    for lvl, p in last.values():
        out.setdefault(lvl, []).append(p)
    return out


class DataParallel:
    """Data-parallel ``learn`` for a :class:`pccompile.PCModule` (or plain ``backward`` for an
    ``nn.Module`` with :meth:`sync`): each rank learns on its shard of the global batch, then
    gradients are averaged and buffers broadcast from rank 0.

    Args:
        module: the converted module (its parameters are the original model's).
        group: the process group (default: the world).
        bucket_mb: the all-reduce bucket size.
        broadcast_buffers: after each synchronised step, copy rank 0's buffers (BatchNorm
            running statistics) to every rank, as DDP does by default.
        overlap: under Z-IL's (and FPA's) event-driven schedule, start each bucket's all-reduce
            when the level that last uses its parameters has run, overlapping communication with
            the levels still to run (other schedules reduce after inference).
        first_bucket_mb: an overlapped bucket is started once the finished levels' gradients
            fill this much (smaller: earlier and more all-reduces).

    ``overlapped`` is the number of buckets whose all-reduce the last step started during
    inference (0 without overlap).

    Gradient accumulation: ``with dp.no_sync(): dp.learn(...)`` for all but the last micro-batch
    (as DDP's ``no_sync``): ``p.grad`` accumulates locally and the next ``learn`` outside it
    averages the sum, and broadcasts the buffers, once.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        group: Any = None,
        bucket_mb: float = BUCKET_MB,
        broadcast_buffers: bool = True,
        overlap: bool = True,
        first_bucket_mb: float = FIRST_BUCKET_MB,
    ):
        self.module, self.group, self.bucket_mb = module, group, bucket_mb
        self.broadcast_buffers, self.overlap = broadcast_buffers, overlap
        self.first_bucket_mb = first_bucket_mb
        self.overlapped = 0
        self._sync = True
        self._final: dict[int, dict[int, list[nn.Parameter]]] = {}  # id(plan) -> _final_levels
        broadcast_state(module, 0, group)  # one starting point on every rank

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's equal slice of a global batch (its size must divide by the world size)."""
        n, r = world_size(self.group), rank(self.group)
        if len(batch) % n:
            raise ValueError(f"a global batch of {len(batch)} does not split over {n} ranks.")
        k = len(batch) // n
        return batch[r * k : (r + 1) * k]

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Learn steps inside accumulate ``p.grad`` on this rank only (no collective but those
        of global layers); the first ``learn`` after it averages the accumulated sum."""
        before, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = before

    def learn(self, *inputs: Any, **kwargs: Any) -> Any:
        """``module.learn`` on this rank's inputs, with the gradients averaged over the ranks
        (overlapped with the schedule where it can be); outside :meth:`no_sync`, also the
        buffers broadcast from rank 0."""
        if not _active(self.group):
            return self.module.learn(*inputs, **kwargs)
        self.overlapped = 0
        if self._moving_ipc(kwargs):  # every in-inference weight step averaged: no_sync or not
            from .rules.ipc import STEP_GRADS

            token = STEP_GRADS.set(self._average)
            try:
                report = self.module.learn(*inputs, **kwargs)
            finally:
                STEP_GRADS.reset(token)
            if self._sync and self.broadcast_buffers:
                broadcast_state(self.module, 0, self.group, buffers_only=True)
            return report
        if not self._sync:
            return self.module.learn(*inputs, **kwargs)
        plan = getattr(self.module, "plan", None)
        if not (self.overlap and plan is not None):
            report = self.module.learn(*inputs, **kwargs)
            self.sync()
            return report
        from .rules.propagate import LEVEL_DONE

        final = self._final.get(id(plan))
        if final is None:
            final = self._final[id(plan)] = _final_levels(plan)
        overlap = _Overlap(final, self.group, self.bucket_mb, self.first_bucket_mb)
        token = LEVEL_DONE.set(overlap)
        try:
            report = self.module.learn(*inputs, **kwargs)
        finally:
            LEVEL_DONE.reset(token)
        self.overlapped = overlap.early
        overlap.finish(self.module.parameters())
        if self.broadcast_buffers:
            broadcast_state(self.module, 0, self.group, buffers_only=True)
        return report

    def sync(self) -> None:
        """Average the gradients over ranks; broadcast rank 0's buffers."""
        if not (self._sync and _active(self.group)):
            return
        all_reduce_grads(self.module.parameters(), self.group, self.bucket_mb)
        if self.broadcast_buffers:
            broadcast_state(self.module, 0, self.group, buffers_only=True)

    def _moving_ipc(self, kwargs: dict) -> bool:
        """Whether this step is iPC moving the weights inside inference (``lr > 0`` or
        ``optimizer=``): each of its in-inference steps must then be averaged over the ranks.
        Its compiled loop has no place to do that: refused."""
        rule = kwargs.get("rule")
        if rule is None:
            rule = getattr(self.module, "rule", None)
        if rule is None:
            return False
        from .rules import make_rule

        options = {k: v for k, v in kwargs.items() if k not in _LEARN_ARGS}
        cfg = make_rule(rule, **options)
        if not (cfg.name == "ipc" and (cfg.lr > 0 or cfg.optimizer is not None)):
            return False
        if cfg.compile:
            raise ConfigError(
                "IPC(compile=True) with lr > 0 moves the weights inside the compiled loop, "
                "where the ranks' steps cannot be averaged: data-parallel, they would drift "
                "apart. Use compile=False (each step's gradient is all-reduced), or one process."
            )
        return True

    def _average(self, params: dict) -> None:
        """iPC's in-inference step gradients, averaged over the ranks (new tensors: the ones
        given may be autograd's, never written in place)."""
        keys = list(params)
        grads = [params[p] for p in keys]
        n = dist.get_world_size(self.group)
        with torch.no_grad():
            for bucket in _buckets(grads, self.bucket_mb):
                flat = torch.cat([grads[i].reshape(-1) for i in bucket])
                dist.all_reduce(flat, group=self.group)
                flat.div_(n)
                offset = 0
                for i in bucket:
                    params[keys[i]] = flat[offset : offset + grads[i].numel()].view_as(grads[i])
                    offset += grads[i].numel()


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
    ``nn.BatchNorm*d`` exactly. Two all-reduces per forward (the sum with the sample count, then
    the centred second moment), no host synchronisation; on CPU it computes in float64 for
    float32 and half inputs (as BatchNorm's CPU kernels accumulate), elsewhere in float32 for
    half inputs. Convert a model's BatchNorm layers with :func:`global_batchnorm`.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xs = x.to(_stats_dtype(x))
        count = xs.new_full((1,), float(x.numel() // x.shape[1]))
        sums = _AllReduceSum.apply(torch.cat([xs.sum(dims), count]))
        total = sums[-1].detach()
        mean = sums[:-1] / total
        xc = xs - mean.view(shape)
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
                self.running_mean.mul_(1 - m).add_(
                    mean.detach().to(self.running_mean.dtype), alpha=m
                )
                unbiased = var.detach() * (total / (total - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Where GlobalBatchNorm computes: float64 on CPU for float32 and half inputs (as
    ``nn.BatchNorm``'s CPU kernels accumulate them in double), float32 for half inputs
    elsewhere."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float64
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class GlobalDropout(nn.Dropout):
    """Dropout whose masks, over the ranks, are the mask one process draws for the global batch.

    Every rank draws the mask of the global batch (``world_size`` times its own shard, equal
    shards) from the same RNG stream (the same seed on every rank) and keeps its own rows, so
    the union of the shards' masks is one process's mask, bitwise, and every rank's RNG stays in
    step. With one process, or in eval mode, it is ``nn.Dropout`` exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and _active()):
            return super().forward(x)
        n, r, k = world_size(), rank(), x.shape[0]
        mask = F.dropout(x.new_ones((n * k, *x.shape[1:])), self.p, True)
        return x * mask[r * k : (r + 1) * k]


#: The leaf modules a model with :func:`global_layers` applied must be converted with.
LEAF_MODULES: tuple[type, ...] = (GlobalBatchNorm, GlobalDropout, nn.SyncBatchNorm)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` (in place; the root is returned,
    replaced if it is one) by a :class:`GlobalBatchNorm` holding the same parameter and buffer
    objects (so the same state-dict keys, dtypes and devices)."""
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        # the very Parameter and buffer objects (their dtype and device; an optimizer may hold
        # them already)
        new._parameters.update(module._parameters)
        new._buffers.update(module._buffers)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module


def global_dropout(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` in ``module`` (in place; the root returned, replaced if it is
    one) by a :class:`GlobalDropout` with the same ``p``."""
    if type(module) is nn.Dropout:
        new = GlobalDropout(module.p, module.inplace)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, global_dropout(child))
    return module


def global_layers(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Make ``module``'s batch-dependent layers see the global batch: BatchNorm becomes
    ``nn.SyncBatchNorm`` on CUDA and :class:`GlobalBatchNorm` elsewhere, ``nn.Dropout`` becomes
    :class:`GlobalDropout`. In place; returns the root. Convert the result with
    ``leaf_modules=LEAF_MODULES``."""
    if torch.device(device).type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    else:
        module = global_batchnorm(module)
    return global_dropout(module)
