"""The synchronous inference loop: every value node updated at every step, as the papers write it.

Reads: a compiled plan and its feed-forward pass. Writes: parameter contributions (``Grads``).
At step ``s`` the loop evaluates every prediction ``mu_v`` from the current value nodes
(``recompute=True``; with ``False`` predictions and Jacobians stay at their feed-forward values:
the fixed-prediction assumption), forms the errors ``eps_v = x_v - mu_v``, takes the parameter
contribution of the vertices ``weights_at(s)`` names, then moves every value node down the
energy gradient: ``x_v += gamma * (-eps_v + sum_c J_{c,v}^T eps_c)``. Z-IL (faithful mode),
FPA (faithful mode), IL and iPC are this loop with different schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from ..engine import (
    FeedForward,
    Grads,
    Plan,
    Vertex,
    add_to,
    call_vertex,
    output_feedback,
    rebuild,
    vjp,
)
from ..frontend.annotate import is_float_tensor
from .report import Trace

__all__ = ["run_sync", "activation_steps"]


def run_sync(
    plan: Plan,
    ff: FeedForward,
    target,
    loss_fn: Callable,
    *,
    n_updates: int,
    gamma: float,
    weights_at: Callable[[int], set[int] | None],
    recompute: bool,
    output_weight: float = 1.0,
    param_scale: float = -1.0,
    trace: Trace | None = None,
    on_step: Callable[[int, Grads], None] | None = None,
    event_driven: bool = True,
    init: str = "forward",
) -> Grads:
    """Run ``n_updates`` inference updates (``n_updates + 1`` error evaluations).

    Args:
        weights_at: step -> ids of vertices whose parameter use is read at that step.
        recompute: re-evaluate predictions from the current value nodes (False: FPA).
        output_weight: weight of the loss term in the energy (IL's output precision).
        param_scale: factor on ``(dg/dtheta)^T eps`` when written as a gradient.
        on_step: called after each step's parameter contributions (iPC applies them there).
        event_driven: skip vertices the error front has not reached yet (exactly zero work);
            must be False when parameters move during inference (iPC with ``lr > 0``).
        init: ``"forward"``: value nodes start at the feed-forward pass; ``"zero"``: at 0
            (every error is non-zero from step 0, so nothing is skipped).
    """
    state = _ValueNodes(plan, ff, zero=init == "zero")
    grads = Grads()
    names = [(v.name, v.level) for v in plan.hidden]
    skip = event_driven and init == "forward"
    first = activation_steps(plan) if skip else {v.vid: 0 for v in plan.hidden}
    for s in range(n_updates + 1):
        # Vertices the error front has not reached have x = mu = their feed-forward values, so
        # eps = 0 and their VJP is zero: skipping them changes no number.
        active = [v for v in state.order if first[v.vid] <= s]
        if recompute:
            flat, mus, loss = state.predict(active, target, loss_fn)
        else:
            flat, mus, loss = ff.flat, ff.mu, ff.loss
        eps = {v.vid: state.errors(v, mus[v.vid], recompute) for v in active}
        if trace is not None:
            errors = [eps.get(v.vid, []) for v in plan.hidden]
            trace.record(names, errors, output_weight * float(loss.detach()))
        acc: list = [None] * len(plan.vertices)
        output_feedback(plan, loss, flat, acc, weight=output_weight, retain=not recompute)
        wset = weights_at(s) or set()
        for v in active:
            if v.kind == "identity":
                add_to(acc, v.source, eps[v.vid])
                continue
            parents = [flat[r] for r in v.parents]
            used = grads if v.vid in wset else None
            vjp(
                v,
                mus[v.vid],
                eps[v.vid],
                parents,
                ff.env,
                used,
                acc,
                retain=not recompute,
                param_scale=param_scale,
            )
        if on_step is not None:
            on_step(s, grads)
        if s < n_updates:
            state.move(acc, eps, gamma)
    return grads


class _ValueNodes:
    """The value nodes of the hidden vertices during inference, carried as ``x = x0 + d``.

    ``x0`` is the feed-forward value and ``d`` the displacement; errors are formed as
    ``eps = d - (mu - x0)``: where a prediction has not moved (``mu == x0`` bitwise) the error
    *is* ``d``, with no rounding from adding and subtracting ``x0``. Same mathematics as
    ``eps = x - mu``, and the synchronous loop's updates equal the event-driven schedule's bit
    for bit. Vertices are visited in that schedule's order (by level, latest consumer first), so
    a vertex's feedback is summed in the same order there and here.
    """

    def __init__(self, plan: Plan, ff: FeedForward, zero: bool = False):
        self.plan, self.ff = plan, ff
        self.order = [plan.vertices[i] for lvl in plan.by_level for i in lvl]
        self.order = [v for v in self.order if v.kind != "output"]
        self.x0 = {v.vid: [t.detach() for t in ff.flat[v.vid]] for v in plan.hidden}
        # zero=True starts the value nodes at x = x0 + (-x0) = 0 instead of the feed-forward pass
        self.d: dict[int, list] = {
            vid: [-t for t in x] if zero else [None] * len(x) for vid, x in self.x0.items()
        }

    def predict(self, active: list[Vertex], target, loss_fn: Callable) -> tuple[list, list, Any]:
        """Fresh value-node leaves ``x0 + d``, each active vertex's prediction re-evaluated from
        them (from its recorded feed-forward state), and the loss at the output."""
        plan, ff = self.plan, self.ff
        n = len(plan.vertices)
        leaves, flat, mus = list(ff.leaves), [None] * n, [None] * n
        for v in plan.hidden:
            flat[v.vid] = [
                (a.detach() if di is None else a + di).requires_grad_()
                for a, di in zip(self.x0[v.vid], self.d[v.vid])
            ]
            leaves[v.vid] = rebuild(ff.leaves[v.vid], flat[v.vid])
        for v in active:
            if v.kind == "identity":
                mus[v.vid] = flat[v.source]
                continue
            with torch.enable_grad():
                out = call_vertex(
                    plan,
                    v,
                    ff.env,
                    leaves,
                    recompute=True,
                    state=ff.state.get(v.vid),
                    devices=ff.devices,
                )
            mus[v.vid] = [t for t in tree_flatten(out)[0] if is_float_tensor(t)]
        output = plan.read_output(ff.env, leaves)
        with torch.enable_grad():
            loss = loss_fn(output, target).reshape(())
        return flat, mus, loss

    def errors(self, v: Vertex, mus: list, recomputed: bool) -> list:
        return _errors(self.x0[v.vid], self.d[v.vid], mus, recomputed)

    def move(self, acc: list, eps: dict, gamma: float) -> None:
        """One inference update of every displacement that has an error or feedback."""
        for vid, d in self.d.items():
            fb, e = acc[vid], eps.get(vid)
            if fb is None and e is None:
                continue
            fb = fb or [None] * len(d)
            e = e or [None] * len(d)
            self.d[vid] = [_step(di, ei, fi, gamma) for di, ei, fi in zip(d, e, fb)]


def _errors(x0: list, d: list, mus: list, recomputed: bool) -> list:
    """``eps = x - mu`` as ``d - (mu - x0)``: exactly ``d`` while ``mu`` sits at ``x0``.
    Predictions that were not recomputed (FPA) are the feed-forward ones: no comparison."""
    out = []
    for a, di, m in zip(x0, d, mus):
        m = m.detach()
        moved = recomputed and m is not a and not torch.equal(m, a)
        if di is None:
            out.append(a - m if moved else torch.zeros_like(a))
        else:
            out.append(di - (m - a) if moved else di)
    return out


def _step(d: torch.Tensor | None, e: torch.Tensor | None, f: torch.Tensor | None, gamma: float):
    """One inference update of the displacement, ``d + gamma * (-eps + feedback)`` (a missing
    term is zero; ``d = None`` is zero too, so the first update is exactly ``gamma * f``)."""
    if f is None:
        step = None if e is None else -gamma * e if gamma != 1.0 else -e
    elif e is None:
        step = f if gamma == 1.0 else gamma * f
    else:
        step = f - e if gamma == 1.0 else gamma * (f - e)
    if step is None:
        return d
    return step if d is None else d + step


def activation_steps(plan: Plan) -> dict[int, int]:
    """The first step at which each vertex's error can be non-zero, starting from the
    feed-forward pass: ``min(d(v), d(p) for p in parents(v))`` with ``d`` the shortest distance
    to the output (the front moves one edge per step; a parent that moves changes ``mu_v``)."""
    children: dict[int, list[int]] = {v.vid: [] for v in plan.vertices}
    for v in plan.vertices:
        for r in [v.source] if v.kind == "identity" else v.parents:
            children[r].append(v.vid)
    dist = {plan.output.vid: 0}
    frontier = [plan.output.vid]
    while frontier:  # breadth-first from the output, against the edges
        nxt = []
        parents_of = {
            v.vid: ([v.source] if v.kind == "identity" else list(v.parents))
            for v in (plan.vertices[i] for i in frontier)
        }
        for c, ps in parents_of.items():
            for p in ps:
                if p not in dist:
                    dist[p] = dist[c] + 1
                    nxt.append(p)
        frontier = nxt
    far = len(plan.vertices) + 1
    out = {}
    for v in plan.hidden:
        ps = [v.source] if v.kind == "identity" else v.parents
        out[v.vid] = min([dist.get(v.vid, far)] + [dist.get(p, far) for p in ps])
    return out
