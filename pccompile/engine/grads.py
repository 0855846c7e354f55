"""Gradient accumulation: parameter contributions summed over a learn step, then ``p.grad``.

Reads: per-use contributions from the rules' local VJPs. Writes: ``p.grad`` of the plan's live
parameters, accumulated like ``loss.backward()`` (and, for parameter transforms, one VJP through
the parameter-only part of the graph first).
Invariant: no two parameters share ``.grad`` memory, and a tensor borrowed from autograd is never
written in place (ownership follows autograd's ``AccumulateGrad``).
"""

from __future__ import annotations

import torch

from .evaluate import FeedForward
from .plan import Plan

__all__ = ["Grads", "memory_of"]

Tensor = torch.Tensor


class Grads:
    """Per-use parameter contributions, summed and only written to ``p.grad`` after inference.

    Ownership follows autograd's ``AccumulateGrad``: a tensor autograd returned is *borrowed*
    (it may be an error node, or the very tensor handed to another parameter: the VJP of
    ``h + a + b`` returns one tensor for both ``a`` and ``b``); it is never written in place.
    The first accumulation into a borrowed entry allocates an owned sum, and :meth:`write`
    steals a borrowed tensor for ``p.grad`` only when no other parameter's gradient shares its
    memory; otherwise it copies.
    """

    def __init__(self) -> None:
        self.params: dict[torch.nn.Parameter, Tensor] = {}
        self.leaves: dict[int, Tensor] = {}
        self.written = True  # False: the rule applied its updates itself (iPC with lr > 0)
        self.run = None  # the approximate rules' inference run (engine.inference.Run)
        # Which live parameters get zeros when no contribution reached them. None: all of them
        # (the approximate rules: the error did not reach them in time, and learn warns). The
        # exact rules name only the parameters of the vertices too few steps left unreached:
        # any other parameter without a contribution is one BP does not reach either, and its
        # .grad stays as it was (None stays None), as autograd leaves it.
        self.zero_fill: tuple[torch.nn.Parameter, ...] | None = None
        self.unreached: list[str] = []  # the exact rules' vertices too few steps left unreached
        self._owned: dict[
            int, Tensor
        ] = {}  # id -> tensor allocated here (kept alive: ids stay unique)

    def _own(self, t: Tensor) -> Tensor:
        self._owned[id(t)] = t
        return t

    def _add(self, table: dict, key, g: Tensor, scale: float) -> None:
        cur = table.get(key)
        if cur is None:
            table[key] = g if scale == 1.0 else self._own(g * scale)
        elif id(cur) in self._owned:
            cur.add_(g, alpha=scale)
        else:
            table[key] = self._own(torch.add(cur, g, alpha=scale))

    def add_param(self, p: torch.nn.Parameter, g: Tensor, scale: float = -1.0) -> None:
        self._add(self.params, p, g, scale)

    def add_leaf(self, slot: int, g: Tensor, scale: float = -1.0) -> None:
        self._add(self.leaves, slot, g, scale)

    def finish(self, plan: Plan, ff: FeedForward, retain: bool = False) -> None:
        """Carry the contributions to parameter transforms back to the parameters (one VJP
        through the parameter-only part of the graph, after inference)."""
        if not self.leaves or not plan.prologue_params:
            return
        slots = [s for s in self.leaves if ff.boundary_out[s].requires_grad]
        if not slots:
            return
        outs = [ff.boundary_out[s] for s in slots]
        cots = [self.leaves[s] for s in slots]
        grads = torch.autograd.grad(
            outs, plan.prologue_params, cots, allow_unused=True, retain_graph=retain
        )
        for p, g in zip(plan.prologue_params, grads):
            if g is not None:
                self.add_param(p, g, 1.0)

    def write(self, plan: Plan) -> None:
        """Accumulate into ``p.grad`` like ``loss.backward()``; parameters the graph uses but no
        update reached in time (too few steps, see :attr:`zero_fill`) get zeros, parameters BP
        would not reach keep their ``.grad``. No two parameters end up sharing a ``.grad``."""
        if not self.written:
            return
        given: set[tuple[int, int]] = set()  # memory handed to a p.grad in this write
        # by id: a Parameter key would cost a Python-level Tensor.__hash__ per lookup
        params = {id(p): g for p, g in self.params.items()}
        live = {id(p) for p in plan.live_params}
        fill = live if self.zero_fill is None else {id(p) for p in self.zero_fill}
        others = [p for p in self.params if id(p) not in live]  # e.g. a learned energy's
        # Grad mode is switched off only around the arithmetic (a switch costs as much as the
        # rest of a small model's write): stealing a tensor records nothing in any mode.
        for p in (*plan.live_params, *others):
            g = params.get(id(p))
            if g is None:
                if id(p) not in fill:
                    continue
                with torch.no_grad():
                    g = torch.zeros_like(p)
            if p.grad is not None:
                with torch.no_grad():
                    p.grad.add_(g)
                continue
            key = memory_of(g)
            # As AccumulateGrad: steal autograd's tensor only if it is whole (not a view into
            # something larger), laid out like the parameter, and no other parameter's
            # gradient holds the same memory; otherwise copy it into the parameter's layout.
            base = g._base
            whole = base is None or (base.numel() == g.numel() and g.is_contiguous())
            steal = whole and g.dtype == p.dtype and g.stride() == p.stride()
            if steal and (key not in given or g.numel() == 0):
                p.grad = g
            else:
                with torch.no_grad():
                    p.grad = torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)
            given.add(key)


def memory_of(t: Tensor) -> tuple[int, int]:
    """Where a tensor's elements start (storage, offset); its identity where it has no storage
    Python can read (complex/conjugate views)."""
    try:
        return t.untyped_storage().data_ptr(), t.storage_offset()
    except RuntimeError:
        return id(t), 0
