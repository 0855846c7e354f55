"""Sharded data-parallel PC training: every rank keeps 1/N of each parameter and its optimizer
state (ZeRO-3 / FSDP's sharding, on ``torch.distributed`` primitives).

Why not ``torch.distributed.fsdp.fully_shard``: FSDP2 all-gathers a module's parameters in a
forward pre-hook of that module and reduce-scatters its gradients from autograd hooks that fire
when ``backward()`` accumulates them. A converted model runs its traced graph (submodules are
inlined into ops, so their forward hooks never fire) and ``learn`` takes per-vertex VJPs with
``torch.autograd.grad`` (no accumulation, so no post-backward hook fires): neither trigger
exists. This module does the same two collectives around ``learn``:

    sdp = pccompile.sharded.ShardedDataParallel(pcm)     # shards rank 0's weights
    opt = torch.optim.Adam(sdp.parameters())             # over this rank's shards only
    for x, y in global_batches:
        opt.zero_grad()
        sdp.learn(sdp.shard(x), target=sdp.shard(y), loss_fn=loss)   # gather, learn, scatter
        opt.step()
    state = sdp.full_state_dict()                        # the whole model's, on every rank

Reads: the process group. Writes: the shards' ``.grad`` (the global batch's mean gradient, this
rank's slice); the model's parameters hold their full values only inside ``learn`` (between
steps each is an empty tensor), buffers are broadcast from rank 0 after each step.
Invariants: a parameter of ``numel`` elements is flattened, padded to a multiple of N and split
in N equal slices, rank ``r`` holding slice ``r``; the optimizer sees only the shards, so its
state is sharded too; every rank runs the same collectives in the same order.
Not done: releasing a level's full parameters as soon as its VJPs have run (the full parameters
and gradients exist during the step, as in FSDP with one unit); overlapping the gathers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .distributed import broadcast_state, rank, world_size
from .errors import ConfigError

__all__ = ["ShardedDataParallel"]


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor, group: Any) -> Any:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, group=group, async_op=True)


class ShardedDataParallel:
    """Data-parallel ``learn`` with parameters, gradients and optimizer state sharded over the
    ranks (see the module docstring).

    Args:
        module: a converted :class:`pccompile.PCModule` (its parameters are the model's).
        group: the process group (default: the world).
        broadcast_buffers: after each step, copy rank 0's buffers to every rank.
    """

    def __init__(self, module: nn.Module, *, group: Any = None, broadcast_buffers: bool = True):
        if not hasattr(module, "learn"):
            raise ConfigError(
                "ShardedDataParallel takes a converted model (pccompile.convert(model, x)): its "
                "learn() is what runs between the gather and the scatter."
            )
        self.module, self.group, self.broadcast_buffers = module, group, broadcast_buffers
        self.n, self.rank = world_size(group), rank(group)
        broadcast_state(module, 0, group)  # one starting point on every rank
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.shards: list[nn.Parameter] = []
        with torch.no_grad():
            for p in self.params:
                k = math.ceil(p.numel() / self.n)
                flat = torch.nn.functional.pad(p.detach().reshape(-1), (0, k * self.n - p.numel()))
                self.shards.append(nn.Parameter(flat[self.rank * k : (self.rank + 1) * k].clone()))
        self._release()

    def parameters(self) -> list[nn.Parameter]:
        """This rank's shards: give them to the optimizer."""
        return list(self.shards)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's equal slice of a global batch (its size must divide by the world size)."""
        if len(batch) % self.n:
            raise ValueError(f"a global batch of {len(batch)} does not split over {self.n} ranks.")
        k = len(batch) // self.n
        return batch[self.rank * k : (self.rank + 1) * k]

    def _gather(self) -> None:
        """All-gather every parameter's full value into it (all collectives in flight at once)."""
        pending = []
        for p, s in zip(self.params, self.shards):
            full = torch.empty(s.numel() * self.n, dtype=s.dtype, device=s.device)
            pending.append(
                (p, full, dist.all_gather_into_tensor(full, s.detach(), self.group, async_op=True))
            )
        for (p, full, work), shape in zip(pending, self.shapes):
            work.wait()
            p.data = full[: math.prod(shape)].view(shape)

    def _release(self) -> None:
        for p in self.params:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            p.grad = None

    def _scatter(self) -> None:
        """Reduce-scatter (sum, then / N) every full gradient into its shard's ``.grad``,
        accumulating like ``backward``."""
        pending = []
        for p, s in zip(self.params, self.shards):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            flat = torch.nn.functional.pad(g.reshape(-1), (0, s.numel() * self.n - p.numel()))
            out = torch.empty_like(s)
            pending.append((s, out, _reduce_scatter(out, flat, self.group)))
        for s, out, work in pending:
            work.wait()
            out.div_(self.n)
            s.grad = out if s.grad is None else s.grad.add_(out)

    def learn(self, *inputs: Any, **kwargs: Any) -> Any:
        """Gather the full parameters, ``module.learn`` on this rank's inputs, reduce-scatter
        the gradients into the shards, free the full tensors; broadcast rank 0's buffers."""
        self._gather()
        try:
            with torch.no_grad():
                for p in self.params:
                    p.grad = None
            report = self.module.learn(*inputs, **kwargs)
            self._scatter()
        finally:
            self._release()
        if self.broadcast_buffers:
            broadcast_state(self.module, 0, self.group, buffers_only=True)
        return report

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's ``state_dict`` (copies), gathered on every rank."""
        self._gather()
        try:
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        finally:
            self._release()

    def full_grads(self) -> list[torch.Tensor]:
        """Every parameter's averaged gradient, whole (gathered from the shards' ``.grad``), in
        the order of ``module.parameters()``; zeros where a shard has none."""
        out = []
        for s, shape in zip(self.shards, self.shapes):
            g = s.grad if s.grad is not None else torch.zeros_like(s)
            full = torch.empty(s.numel() * self.n, dtype=s.dtype, device=s.device)
            dist.all_gather_into_tensor(full, g.detach().contiguous(), self.group)
            out.append(full[: math.prod(shape)].view(shape).clone())
        return out
