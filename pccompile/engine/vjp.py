"""Local VJPs: the only derivatives a rule takes, each over one vertex's own function.

Reads: a vertex's predictions (with their local autograd graphs), its error nodes, its parents'
value nodes. Writes: feedback ``J_{v,p}^T eps_v`` into the parents' accumulators and, when asked,
``(dg_v/dtheta)^T eps_v`` for the vertex's own parameter uses into a :class:`Grads`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError
from .evaluate import FeedForward
from .grads import Grads
from .plan import Plan, Vertex

__all__ = ["add_to", "loss_feedback", "vjp", "vjp_pruned"]

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


def loss_feedback(
    plan: Plan, ff: FeedForward, grads: Grads, acc: list, *, weight: float = 1.0
) -> dict[int, list]:
    """Differentiate the loss over everything it reads, once per learn step.

    ``loss_fn`` is evaluated once, in the feed-forward pass, and may read more than the output:

    * the output's value nodes: their feedback ``J_out^T e_out = -weight * dL/dx`` goes into
      the parents' accumulators ``acc`` (a negative ``weight`` gives ``+dL/dx``, for schedules
      that store error nodes sign-flipped);
    * a parameter (or any other leaf tensor) directly (an L2 penalty, CLIP's ``logit_scale``, a
      learned log-variance): its direct term ``dL/dtheta``, local to the loss (part of the output
      vertex's energy), goes into ``grads``;
    * an activation of this pass (a prediction captured by a forward hook, a value node captured
      by a pre-hook): the vertex that produced it is also an output of the PC graph; the loss's
      error on it is returned (vertex id -> feedback per value-node tensor) for the schedule to
      deliver to that vertex.

    What the loss reads is found by walking its autograd graph (:func:`_loss_reads`); a tensor
    an earlier call left on an attribute is refused naming it.
    """
    loss = ff.loss
    parents = plan.output.parents
    flat = ff.flat
    outs = flat[parents[0]] if len(parents) == 1 else [t for r in parents for t in flat[r]]
    if not loss.requires_grad:
        if outs:
            raise InputError("The loss does not depend on the model output; nothing to learn from.")
        return {}
    direct, act = _loss_reads(plan, ff, outs)
    cot = torch.full_like(loss, -weight)
    if not direct and not act:  # the common case: the loss reads the output only
        res = _grad([loss], outs, [cot], False) if outs else ()
        k = 0
        for r in parents:
            n = len(flat[r])
            add_to(acc, r, res[k : k + n])
            k += n
        return {}
    inputs = [*outs, *direct, *(t for _, _, t in act)]
    # Cut the loss's graph at the activations it reads: their error enters their own vertex's
    # VJP, so autograd must not also carry it on to that vertex's parameters and parents here
    # (a tensor hook captures the error and passes zeros on).
    cut: dict[int, Tensor] = {}
    handles = [t.register_hook(_cut(cut, key)) for key, (_, _, t) in enumerate(act) if t.grad_fn]
    try:
        res = _grad([loss], inputs, [cot], bool(act))
    finally:
        for h in handles:
            h.remove()
    k = 0
    for r in parents:
        n = len(flat[r])
        add_to(acc, r, res[k : k + n])
        k += n
    scale = 1.0 / -weight  # res holds -weight * dL/d(.); a parameter's term is +dL/dtheta
    for p, g in zip(direct, res[k : k + len(direct)]):
        if g is not None:
            grads.add_param(p, g, scale)
    k += len(direct)
    extra: dict[int, list] = {}
    for key, ((vid, j, t), g) in enumerate(zip(act, res[k:])):
        g = cut.get(key, g) if t.grad_fn is not None else g
        if g is not None:
            cur = extra.setdefault(vid, [None] * len(flat[vid]))
            cur[j] = g if cur[j] is None else cur[j] + g
    return extra


def _cut(store: dict, key: int) -> Callable:
    def hook(g: Tensor) -> Tensor:
        store[key] = g
        return torch.zeros_like(g)

    return hook


def _accumulate_grad_type() -> type:
    with torch.enable_grad():  # the first import may happen inside a user's no_grad block
        return type(torch.zeros(1, requires_grad=True).view(1).grad_fn.next_functions[0][0])


_ACCUMULATE = _accumulate_grad_type()


def _loss_reads(plan: Plan, ff: FeedForward, outs: list) -> tuple[list, list]:
    """What the loss's autograd graph reaches apart from the output's value nodes: the leaf
    tensors it reads itself (parameters, a user's tensors) and the activations of this pass,
    as ``(vertex id, index in its value node, tensor)``.

    The walk goes through every node the loss made and every node of this pass that is not a
    prediction (a hook's computation on an activation: part of the loss's own function of value
    nodes and parameters), and stops at leaves and at predictions. Autograd's sequence numbers
    tell them apart: the loss's nodes come after the pass's last prediction, the pass's lie
    between its first and its last, and older ones were left by an earlier call: refused."""
    end = _edge_seq(ff, reversed(plan.vertices))
    start = by_fn = None
    own = {id(t) for t in outs}
    direct, acts, stale, seen = [], [], [], set()
    stack = [(ff.loss.grad_fn, 0)]
    while stack:
        fn, nr = stack.pop()
        if fn is None:
            continue
        if type(fn) is _ACCUMULATE:
            var = fn.variable
            if id(var) not in own and id(var) not in seen:
                seen.add(id(var))
                direct.append(var)
            continue
        seq = fn._sequence_nr()
        if seq <= end:  # made by the forward, or before it
            if start is None:
                start, by_fn = _edge_seq(ff, plan.vertices), _predictions(plan, ff)
            if seq < start:
                stale.append(fn)
                continue
            hit = by_fn.get((fn, nr))
            if hit is not None:
                acts.append(hit)
                continue
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(fn.next_functions)
    if stale:
        raise InputError(
            f"loss_fn reads {_describe(plan.gm if ff.root is None else ff.root, stale)}, which "
            f"this learn step's feed-forward pass did not compute: the converted graph runs the "
            f"forward's tensor operations, not its Python side effects, so a tensor the forward "
            f"stores on an attribute is still the one an earlier call left there. Return it "
            f"from forward (e.g. `return out, aux`) and read it from the output in loss_fn."
        )
    if all(isinstance(t, torch.nn.Parameter) for t in direct):
        return direct, acts
    by_leaf = {id(x): (v.vid, j, x) for v in plan.hidden for j, x in enumerate(ff.flat[v.vid])}
    keep = [t for t in direct if id(t) not in by_leaf]  # a user's own leaf tensor: as autograd
    acts += [by_leaf[id(t)] for t in direct if id(t) in by_leaf]  # a value node (a pre-hook)
    return keep, list({(a[0], a[1]): a for a in acts}.values())


def _edge_seq(ff: FeedForward, vertices: Any) -> int:
    """The sequence number of the first prediction with an autograd node among ``vertices``
    (-1 if none): given in reverse order, the pass's last; in order, its first."""
    for v in vertices:
        for m in ff.mu[v.vid] or ():
            if m.grad_fn is not None:
                return m.grad_fn._sequence_nr()
    return -1


def _predictions(plan: Plan, ff: FeedForward) -> dict:
    """(autograd node, output index) -> (vertex id, index, prediction) of this pass."""
    out = {}
    for v in plan.hidden:
        for j, m in enumerate(ff.mu[v.vid] or ()):
            if m.grad_fn is not None:
                out.setdefault((m.grad_fn, m.output_nr), (v.vid, j, m))
    return out


def _describe(root: torch.nn.Module, fns: list) -> str:
    """Name the module attributes holding tensors made by ``fns`` (what a loss read stale)."""
    names = [
        f"{name}.{k}".lstrip(".")
        for name, m in root.named_modules()
        for k, t in vars(m).items()
        if isinstance(t, Tensor) and t.grad_fn is not None and t.grad_fn in fns
    ]
    return f"the attribute {', '.join(names)}" if names else "a tensor computed outside it"
