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

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar

from ..engine import FeedForward, Grads, Plan, add_to, loss_feedback
from ..engine.vjp import vjp_pruned

__all__ = ["LEVEL_DONE", "propagate", "set_unreached"]

#: Called as ``hook(t, grads)`` after level ``t``'s vertices have run: every contribution to the
#: parameters that vertices at levels ``<= t`` use directly is then in ``grads`` (later levels
#: never touch them). :class:`pccompile.distributed.DataParallel` starts those parameters'
#: all-reduce there, overlapping it with the levels still to run.
LEVEL_DONE: ContextVar[Callable[[int, Grads], None] | None] = ContextVar("LEVEL_DONE", default=None)


def propagate(
    plan: Plan,
    ff: FeedForward,
    *,
    gamma: float,
    last_level: int,
    scope: Callable[[int], AbstractContextManager] | None = None,
) -> Grads:
    """The event-driven schedule: levels ``1 .. last_level`` in order, one VJP per vertex.

    Valid for Z-IL on a leveled graph, and for FPA with gamma = 1 on any graph (increasing level
    is a reverse topological order, and FPA's fixed point is reached there).

    Error nodes are carried sign-flipped here (``acc`` and ``neg_eps`` hold ``-eps``): the VJP of
    ``-eps`` gives a parameter's contribution with ``p.grad``'s sign directly, so parameter-sized
    gradients are kept as autograd returns them, never negated or copied.

    ``scope(t)``, if given, is entered around level ``t``'s work (``t = 0``: the output's
    feedback); the ONNX learn export uses it to tag each traced op with its level.
    """
    vertices, flat, mu, env, leaves = plan.vertices, ff.flat, ff.mu, ff.env, ff.leaves
    scope = scope or _no_scope
    acc: list = [None] * len(vertices)
    grads = Grads()
    with scope(0):  # the loss's error on the output and on any activation it reads
        for vid, fb in loss_feedback(plan, ff, grads, acc, weight=-1.0).items():
            add_to(acc, vid, fb)  # an activation the loss reads: before the front arrives
    level_done = LEVEL_DONE.get()
    for t in range(1, min(last_level, len(plan.by_level) - 1) + 1):
        with scope(t):
            for vid in plan.by_level[t]:
                fb, acc[vid] = acc[vid], None
                v = vertices[vid]
                if fb is not None:  # else no error reached it (e.g. steps ran out before it)
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
        if level_done is not None:
            level_done(t, grads)
    if last_level < len(plan.by_level) - 1:  # too few steps: some levels never ran
        unreached = [v for v in vertices if v.level > last_level and (v.params or v.param_leaves)]
        set_unreached(grads, plan, unreached)
    else:
        grads.zero_fill = ()
    return grads


def _no_scope(level: int) -> AbstractContextManager:
    return nullcontext()


def set_unreached(grads: Grads, plan: Plan, unreached: list) -> None:
    """Record the vertices with parameters that too few steps left unreached: their parameters
    get zeros (learn warns); a parameter no error reaches otherwise keeps its ``.grad``."""
    grads.unreached = [v.name for v in unreached]
    params = [p for v in unreached for p in v.params]
    if any(v.param_leaves for v in unreached):
        params += plan.prologue_params
    grads.zero_fill = tuple(params)
