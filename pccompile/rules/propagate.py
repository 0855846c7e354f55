"""The event-driven schedule: the error front moves one level per step, one local VJP per vertex.

Reads: a compiled plan and its feed-forward pass. Writes: parameter contributions (``Grads``).

Before the error front reaches a vertex its error is zero and its parents have not moved, so at
step ``t`` only the level-``t`` frontier changes anything still needed. Each frontier vertex's
error node is updated once, ``eps_v <- eps_v + gamma * (-eps_v + sum_c J_{c,v}^T eps_c)`` with
``eps_v = 0`` before, and one local VJP gives both its parents' feedback and its own parameter
update: BP's cost. This is Z-IL's efficient mode on a leveled graph, and FPA's fixed point (gamma
= 1) on any graph; the synchronous loop (:mod:`pccompile.rules.sync`) gives the same updates.
"""

from __future__ import annotations

from ..engine import FeedForward, Grads, Plan, add_to, loss_feedback
from ..engine.vjp import vjp_pruned

__all__ = ["propagate", "set_unreached"]


def propagate(plan: Plan, ff: FeedForward, *, gamma: float, last_level: int) -> Grads:
    """The event-driven schedule: levels ``1 .. last_level`` in order, one VJP per vertex.

    Valid for Z-IL on a leveled graph, and for FPA with gamma = 1 on any graph (increasing level
    is a reverse topological order, and FPA's fixed point is reached there).

    Error nodes are carried sign-flipped here (``acc`` and ``neg_eps`` hold ``-eps``): the VJP of
    ``-eps`` gives a parameter's contribution with ``p.grad``'s sign directly, so parameter-sized
    gradients are kept as autograd returns them, never negated or copied.
    """
    vertices, flat, mu, env, leaves = plan.vertices, ff.flat, ff.mu, ff.env, ff.leaves
    acc: list = [None] * len(vertices)
    grads = Grads()
    # the loss's error on the output (and on any activation it reads), and its direct terms
    for vid, fb in loss_feedback(plan, ff, grads, acc, weight=-1.0).items():
        add_to(acc, vid, fb)  # an activation the loss reads: feedback before the front arrives
    for t in range(1, min(last_level, len(plan.by_level) - 1) + 1):
        for vid in plan.by_level[t]:
            fb, acc[vid] = acc[vid], None
            v = vertices[vid]
            if fb is not None:  # else no error reached it (e.g. steps ran out before its level)
                # eps_v was 0 until the front arrived: eps_v <- 0 + gamma * (-0 + feedback).
                neg_eps = fb if gamma == 1.0 else [None if f is None else gamma * f for f in fb]
                if v.kind == "identity":
                    add_to(acc, v.source, neg_eps)
                else:
                    vjp_pruned(v, mu[vid], neg_eps, flat, env, grads, acc)
            # ff.release(v), inlined: its children are done and its own graph is consumed
            mu[vid] = flat[vid] = leaves[vid] = None
            if v.slot >= 0:
                env[v.slot] = None
    if last_level < len(plan.by_level) - 1:  # too few steps: some levels never ran
        unreached = [v for v in vertices if v.level > last_level and (v.params or v.param_leaves)]
        set_unreached(grads, plan, unreached)
    else:
        grads.zero_fill = ()
    return grads


def set_unreached(grads: Grads, plan: Plan, unreached: list) -> None:
    """Record the vertices with parameters that too few steps left unreached: their parameters
    get zeros (learn warns); a parameter no error reaches otherwise keeps its ``.grad``."""
    grads.unreached = [v.name for v in unreached]
    params = [p for v in unreached for p in v.params]
    if any(v.param_leaves for v in unreached):
        params += plan.prologue_params
    grads.zero_fill = tuple(params)
