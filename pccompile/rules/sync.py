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

import torch
from torch.utils._pytree import tree_flatten

from ..engine import (
    FeedForward,
    Grads,
    Plan,
    Vertex,
    add_to,
    call_vertex,
    loss_feedback,
    rebuild,
    vjp,
)
from ..frontend.annotate import is_float_tensor
from .propagate import set_unreached
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
    # loss_fn ran once, in the feed-forward pass (as BP's loss does): its error on the output
    # is the output error of every step, and its direct parameter terms are added once. An
    # activation the loss reads is an output of the PC graph too, reached through the identity
    # vertices levelling would put on that edge: its error arrives at step level(v) - 1.
    dist, far = distances(plan), len(plan.vertices) + 1
    reached: set[int] = set()  # vertices whose parameters were read with the error there
    out_fb: list = [None] * len(plan.vertices)
    extra = loss_feedback(plan, ff, grads, out_fb, weight=output_weight)
    arrives = {vid: plan.vertices[vid].level - 1 for vid in extra}
    out_fb = [(vid, fb) for vid, fb in enumerate(out_fb) if fb is not None]
    loss_term = output_weight * float(ff.loss.detach())
    for s in range(n_updates + 1):
        # Vertices the error front has not reached have x = mu = their feed-forward values, so
        # eps = 0 and their VJP is zero: skipping them changes no number.
        active = [v for v in state.order if first[v.vid] <= s]
        if recompute:
            flat, mus = state.predict(active)
        else:
            flat, mus = ff.flat, ff.mu
        eps = {v.vid: state.errors(v, mus[v.vid], recompute) for v in active}
        if trace is not None:
            errors = [eps.get(v.vid, []) for v in plan.hidden]
            if trace.keep_errors:  # zero errors as tensors, for the caller
                errors = [_zeros_for(e, state.x0[v.vid]) for v, e in zip(plan.hidden, errors)]
            trace.record(names, errors, loss_term)
        acc: list = [None] * len(plan.vertices)
        for vid, fb in out_fb:
            add_to(acc, vid, fb)
        for vid, fb in extra.items():
            if arrives[vid] <= s:
                add_to(acc, vid, fb)
        wset = weights_at(s) or set()
        reached.update(vid for vid in wset if dist.get(vid, far) <= s)
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
    unreached = [v for v in plan.hidden if v.vid not in reached and (v.params or v.param_leaves)]
    set_unreached(grads, plan, unreached)
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

    def predict(self, active: list[Vertex]) -> tuple[list, list]:
        """Fresh value-node leaves ``x0 + d`` and each active vertex's prediction re-evaluated
        from them (from its recorded feed-forward state)."""
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
        return flat, mus

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
    Predictions that were not recomputed (FPA) are the feed-forward ones: no comparison. An
    error that is zero because nothing has reached the vertex is None (no VJP runs on it)."""
    out = []
    for a, di, m in zip(x0, d, mus):
        m = m.detach()
        moved = recomputed and m is not a and not torch.equal(m, a)
        if di is None:  # None: exactly zero, and no error ever reached it (.grad stays None)
            out.append(a - m if moved else None)
        else:
            out.append(di - (m - a) if moved else di)
    return out


def _zeros_for(eps: list, x0: list) -> list:
    return [torch.zeros_like(a) if e is None else e for e, a in zip(eps, x0)] if eps else eps


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
    dist = distances(plan)
    far = len(plan.vertices) + 1
    out = {}
    for v in plan.hidden:
        ps = [v.source] if v.kind == "identity" else v.parents
        out[v.vid] = min([dist.get(v.vid, far)] + [dist.get(p, far) for p in ps])
    return out


def distances(plan: Plan) -> dict[int, int]:
    """Each vertex's shortest distance to the output: the step at which the error arrives."""
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
    return dist
