"""Local VJPs: the only derivatives a rule takes, each over one vertex's own function.

Reads: a vertex's predictions (with their local autograd graphs), its error nodes, its parents'
value nodes. Writes: feedback ``J_{v,p}^T eps_v`` into the parents' accumulators and, when asked,
``(dg_v/dtheta)^T eps_v`` for the vertex's own parameter uses into a :class:`Grads`.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .grads import Grads
from .plan import Plan, Vertex

__all__ = ["add_to", "output_feedback", "vjp", "vjp_pruned"]

Tensor = torch.Tensor


def vjp(
    v: Vertex,
    mus: list[Tensor],
    eps: list,
    parent_flat: list[list[Tensor]],
    env: list,
    grads: Grads | None,
    acc: list,
    *,
    retain: bool = False,
    param_scale: float = -1.0,
    prune: bool = False,
) -> None:
    """Local VJP of vertex ``v`` at error ``eps``: adds ``J_{v,p}^T eps`` to each parent's
    accumulator and, if ``grads`` is given, ``param_scale * (dg_v/dtheta)^T eps`` for this use of
    each of its parameters. ``prune=True`` skips parents whose feedback cannot reach a parameter
    (only valid when nothing but parameter updates is wanted: the efficient schedules)."""
    if prune:
        keep = [i for i, r in enumerate(v.parents) if v.feeds[i]]
        if len(keep) != len(v.parents):
            parents = [v.parents[i] for i in keep]
            parent_flat = [parent_flat[i] for i in keep]
            return _vjp(v, parents, mus, eps, parent_flat, env, grads, acc, retain, param_scale)
    return _vjp(v, v.parents, mus, eps, parent_flat, env, grads, acc, retain, param_scale)


def vjp_pruned(v: Vertex, mus: list[Tensor], eps: list, flat: list, env: list, grads: Grads, acc):
    """:func:`vjp` with ``prune=True``, ``param_scale=1.0``, ``retain=False`` (the efficient
    schedules' call), reading the parents' value nodes from ``flat`` (per vertex id) itself:
    the same autograd call and the same accumulation order, with less Python around it."""
    if len(mus) == 1:
        m, e = mus[0], eps[0]
        if e is None or not m.requires_grad:
            return
        outs, cots = (m,), (e,)
    else:
        outs = tuple(m for m, e in zip(mus, eps) if e is not None and m.requires_grad)
        if not outs:
            return
        cots = tuple(e for m, e in zip(mus, eps) if e is not None and m.requires_grad)
    parents, params, slots = v.fed, v.params, v.param_leaves
    if not parents:
        inputs = params
    elif len(parents) == 1:
        inputs = (*flat[parents[0]], *params)
    else:
        inputs = tuple(t for r in parents for t in flat[r]) + params
    if slots:
        inputs += tuple(env[s] for s in slots)
    if not inputs:
        return
    try:  # _grad, inlined
        res = _ENGINE.run_backward(outs, cots, False, False, inputs, True, False)
    except TypeError:  # pragma: no cover - a future torch with another signature
        res = _grad(outs, inputs, cots, False)
    k = 0
    for r in parents:
        fl = flat[r]
        if len(fl) == 1 and acc[r] is None:  # add_to's first feedback, inlined
            acc[r] = [res[k]]
            k += 1
            continue
        n = len(fl)
        add_to(acc, r, res[k : k + n])
        k += n
    table = grads.params
    for p in params:
        g = res[k]
        k += 1
        if g is not None:
            # One hash of p (a Python-level Tensor.__hash__): setdefault stores g if p is new.
            n = len(table)
            table.setdefault(p, g)
            if len(table) == n:  # p had a contribution already: sum as Grads.add_param does
                grads.add_param(p, g, 1.0)
    for s in slots:
        g = res[k]
        k += 1
        if g is not None:
            grads.add_leaf(s, g, 1.0)


def _vjp(v, parents, mus, eps, parent_flat, env, grads, acc, retain, param_scale) -> None:
    outs, cots = [], []
    for m, e in zip(mus, eps):
        if e is not None and m.requires_grad:
            outs.append(m)
            cots.append(e)
    if not outs:
        return
    inputs = [t for fl in parent_flat for t in fl]
    n_par = len(inputs)
    if grads is not None:
        inputs += list(v.params) + [env[s] for s in v.param_leaves]
    if not inputs:
        return
    res = _grad(outs, inputs, cots, retain)
    k = 0
    for r, fl in zip(parents, parent_flat):
        n = len(fl)
        add_to(acc, r, res[k : k + n])
        k += n
    if grads is not None:
        for p, g in zip(v.params, res[n_par : n_par + len(v.params)]):
            if g is not None:
                grads.add_param(p, g, param_scale)
        for s, g in zip(v.param_leaves, res[n_par + len(v.params) :]):
            if g is not None:
                grads.add_leaf(s, g, param_scale)


def _grad(outs: list[Tensor], inputs: list[Tensor], cots: list[Tensor], retain: bool) -> tuple:
    """``torch.autograd.grad(outs, inputs, cots, allow_unused=True)`` without its Python-side
    argument checks (one call per vertex makes them a measurable share of a step; the engine
    checks shapes itself). Falls back to the public call if the engine entry point changes."""
    try:
        return _ENGINE.run_backward(
            tuple(outs), tuple(cots), retain, False, tuple(inputs), True, False
        )
    except TypeError:  # pragma: no cover - a future torch with another signature
        return torch.autograd.grad(outs, inputs, cots, allow_unused=True, retain_graph=retain)


_ENGINE = torch.autograd.Variable._execution_engine


def add_to(acc: list, r: int, gs) -> None:
    cur = acc[r]
    if cur is None:
        acc[r] = list(gs)
        return
    for j, g in enumerate(gs):
        if g is not None:
            cur[j] = g if cur[j] is None else cur[j] + g


def output_feedback(
    plan: Plan, loss: Tensor, flat: list, acc: list, *, weight: float = 1.0, retain: bool = False
) -> None:
    """Add ``J_out^T e_out = -weight * dL/dx`` to the output's parents' accumulators (a negative
    ``weight`` gives ``+dL/dx``, for schedules that store error nodes sign-flipped)."""
    v = plan.output
    parents = v.parents
    inputs = flat[parents[0]] if len(parents) == 1 else [t for r in parents for t in flat[r]]
    if not inputs:
        return
    if not loss.requires_grad:
        raise InputError("The loss does not depend on the model output; nothing to learn from.")
    res = _grad([loss], inputs, [torch.full_like(loss, -weight)], retain)
    k = 0
    for r in v.parents:
        n = len(flat[r])
        add_to(acc, r, res[k : k + n])
        k += n
