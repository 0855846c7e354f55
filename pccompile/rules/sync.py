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

from ..annotate import is_float_tensor
from ..engine import FeedForward, Grads, Plan, add_to, call_vertex, output_feedback, rebuild, vjp
from . import Trace


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
) -> Grads:
    """Run ``n_updates`` inference updates (``n_updates + 1`` error evaluations).

    Args:
        weights_at: step -> ids of vertices whose parameter use is read at that step.
        output_weight: weight of the loss term in the energy (IL's output precision).
        param_scale: factor on ``(dg/dtheta)^T eps`` when written as a gradient.
        on_step: called after each step's parameter contributions (iPC applies them there).
    """
    hidden = plan.hidden
    n = len(plan.vertices)
    x = {v.vid: [t.detach().clone() for t in ff.flat[v.vid]] for v in hidden}
    grads = Grads()
    names = [(v.name, v.level) for v in hidden]
    for s in range(n_updates + 1):
        wset = weights_at(s) or set()
        if recompute:
            leaves = list(ff.leaves)
            flat: list = [None] * n
            for v in hidden:
                flat[v.vid] = [t.detach().requires_grad_() for t in x[v.vid]]
                leaves[v.vid] = rebuild(ff.leaves[v.vid], flat[v.vid])
            mus: list = [None] * n
            for v in hidden:
                if v.kind == "identity":
                    mus[v.vid] = flat[v.source]
                    continue
                with torch.enable_grad():
                    out = call_vertex(plan, v, ff.env, leaves, recompute=True,
                                      rng=ff.rng.get(v.vid), devices=ff.devices)  # fmt: skip
                mus[v.vid] = [t for t in tree_flatten(out)[0] if is_float_tensor(t)]
            output = plan.output.load(ff.env, leaves)[0][0]
            with torch.enable_grad():
                loss = loss_fn(output, target).reshape(())
        else:
            flat, mus, loss = ff.flat, ff.mu, ff.loss
        eps = {v.vid: [xi - m.detach() for xi, m in zip(x[v.vid], mus[v.vid])] for v in hidden}
        if trace is not None:
            trace.record(names, [eps[v.vid] for v in hidden], output_weight * float(loss.detach()))
        acc: list = [None] * n
        output_feedback(plan, loss, flat, acc, weight=output_weight, retain=not recompute)
        for v in hidden:
            if v.kind == "identity":
                add_to(acc, v.source, eps[v.vid])
                continue
            vjp(v, mus[v.vid], eps[v.vid], [flat[r] for r in v.parents], ff.env,
                grads if v.vid in wset else None, acc, retain=not recompute,
                param_scale=param_scale)  # fmt: skip
        if on_step is not None:
            on_step(s, grads)
        if s < n_updates:
            for v in hidden:
                fb = acc[v.vid] or [None] * len(x[v.vid])
                x[v.vid] = [
                    xi - gamma * e if f is None else xi + gamma * (f - e)
                    for xi, e, f in zip(x[v.vid], eps[v.vid], fb)
                ]
    return grads
