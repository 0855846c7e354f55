"""The compiled inference loop: ``IL(compile=True)``, ``IPC(compile=True, lr=...)``.

Reads: a plan, its feed-forward pass and an inference :class:`~pccompile.engine.inference.Setup`.
Writes: ``torch.compile``'s cache (one compiled loop per plan, setup and input signature);
returns the final value nodes, the energy per step and the parameter gradients.

Two steps. :func:`energy_module` generates the energy as one ``fx.GraphModule``: the plan's graph
with a placeholder per free value node, each vertex's prediction computed from its parents'
value nodes, and ``F = sum_v pi_v E_v(x_v, mu_v) + w B L(out, y)`` as its output; the meta
values of the feed-forward pass (masks, sizes) come in as inputs. Then the whole ``T``-step
loop is one function of (parameters, value nodes, batch): ``torch.func.grad`` of that energy
for the value nodes at every step, and for the parameters at the end (IL) or at every step
(iPC), compiled by ``torch.compile(fullgraph=True)``. Same mathematics as the eager loop of
:mod:`pccompile.engine.inference`, with its event-driven skips for IL (inference step ``s`` uses
the energy graph of the vertices the error front has reached by then, fixed at trace time);
results agree to rounding (tests).

Limits, each refused with a ConfigError naming the vertex: random or stateful vertices
(dropout, train-mode BatchNorm: their replayed state is eager-only), vertices with several
tensor outputs, value-node optimisers, traces, free inputs.
"""

from __future__ import annotations

import functools
import itertools
import operator
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..energies import squared_error
from ..errors import ConfigError
from ..frontend.export import unflatten_output
from .evaluate import FeedForward
from .inference import Setup, batch_size, resolve, unreached
from .plan import Plan

__all__ = ["energy_module", "run_compiled", "CompiledLoop"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plan -> {key: CompiledLoop}
_SERIAL = itertools.count()


def _refuse(why: str) -> None:
    raise ConfigError(f"compile=True: {why} Run this model with compile=False (the eager loop).")


def energy_module(
    plan: Plan,
    net: Any,
    setup: Setup,
    loss_fn: Callable,
    batch: int,
    *,
    constants: bool,
    active: frozenset[int] | None = None,
):
    """Generate the energy graph (see the module docstring).

    Returns ``(gm, meta_slots, const_vids)``: ``gm(*inputs, target, *values, *clamps, *metas,
    *consts) -> F`` with ``values`` the free vertices' value nodes in ``net.free`` order,
    ``clamps`` the clamped vertices' values in ``net.clamped`` order, ``metas`` the
    feed-forward values of the env slots ``meta_slots`` and, with ``constants=True``, ``consts``
    the feed-forward predictions of the vertices ``const_vids``, which read only the clamped
    inputs (so the loop does not recompute them; their parameters then get no gradient).
    ``active``: the vertices with an energy term (the others' errors are still zero at that
    step: the error front has not reached them); None: every vertex.
    """
    src = plan.gm.graph
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    index = {n: i for i, n in enumerate(plan.nodes)}
    vid_of = plan.vid_of_node
    by_vid = {v.vid: v for v in plan.vertices}
    for n in src.nodes:
        if n.op == "placeholder":
            env[n] = g.placeholder(n.name)
    target = g.placeholder("pc_target")
    xs = {}
    for v in net.free:
        if len(v.node.meta["pc"].shapes) != 1:
            _refuse(f"vertex {v.name!r} has several tensor outputs.")
        xs[v.vid] = g.placeholder(f"x_{v.node.name}")  # an identifier: v.name may hold dots
    clamps = {vid: g.placeholder(f"clamp_{by_vid[vid].node.name}") for vid in net.clamped}
    meta_slots: list[int] = []
    metas: dict[fx.Node, fx.Node] = {}
    for n in src.nodes:
        if n.meta["pc"].role == "meta" and n.op != "placeholder":
            meta_slots.append(index[n])
            metas[n] = g.placeholder(f"meta_{n.name}")
    free_in = set(net.input_slots.values())
    const_vids = [
        v.vid
        for v in net.order
        if constants and v.kind == "op" and not v.parents and not free_in & set(v.input_slots)
    ]
    consts = {by_vid[vid].node: g.placeholder(f"mu_{by_vid[vid].node.name}") for vid in const_vids}
    terms: list[fx.Node] = []
    for n in src.nodes:
        role = n.meta["pc"].role
        if n.op == "placeholder":
            continue
        if role == "meta":
            env[n] = metas[n]
            continue
        if role == "effect":  # a buffer update: made once, in the feed-forward pass
            continue
        if n.op == "output":
            out = fx.map_arg(n.args[0], lambda a: env[a])
            if getattr(plan.gm, "_out_spec", None) is not None:  # torch.export: flat outputs
                out = g.call_function(functools.partial(unflatten_output, plan.gm), (out,))
            loss = g.call_function(loss_fn, (out, target))
            w_b = float(setup.output_precision) * batch
            terms.append(g.call_function(operator.mul, (loss, w_b)))
            continue
        if n in vid_of and role in ("vertex", "identity"):
            v = by_vid[vid_of[n]]
            skipped = active is not None and v.vid not in active and v.vid not in net.predicted
            if skipped:  # no energy term yet, and readers read the value node
                env[n] = clamps.get(v.vid, xs.get(v.vid))
                continue
        if role == "identity" and n in vid_of:
            v = by_vid[vid_of[n]]
            mu = env[v.node.args[0]]
        elif n in consts:
            mu = consts[n]
        else:
            mu = g.node_copy(n, lambda a: env[a])
        if n not in vid_of or role not in ("vertex", "identity"):
            env[n] = mu
            continue
        v = by_vid[vid_of[n]]
        if _replays_state(plan, v):
            _refuse(f"vertex {v.name!r} is {v.rule.kind} (random draws or buffers to replay).")
        if v.vid in net.predicted:
            env[n] = mu
            continue
        x = clamps.get(v.vid, xs.get(v.vid))
        env[n] = x
        fn = setup.energies.get(v.name, squared_error)
        term = g.call_function(fn, (x, mu))
        pi = setup.precision.get(v.name, 1.0)
        terms.append(term if pi == 1.0 else g.call_function(operator.mul, (term, float(pi))))
    total = terms[0]
    for t in terms[1:]:
        total = g.call_function(operator.add, (total, t))
    g.output(total)
    gm = fx.GraphModule(plan.gm, g, class_name="PCEnergy")
    for fn in setup.energies.values():  # energies with parameters: reachable by functional_call
        if isinstance(fn, nn.Module):
            _refuse("energies with parameters (learned variances) are eager-only for now.")
    return gm, meta_slots, const_vids


_EVAL_PURE = (  # modules whose state or randomness is used only in training mode
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)


def _replays_state(plan: Plan, v: Any) -> bool:
    """Whether re-evaluating ``v`` needs the eager loop's recorded RNG or buffers. In eval mode
    a vertex whose random or stateful members are all BatchNorm/InstanceNorm/Dropout modules is
    a pure function (running statistics read, no draws)."""
    if v.rule is None or not (v.rule.replays_rng or v.rule.protects_buffers):
        return False
    if plan.training or v.module is None:
        return True
    members = [m for m in v.module.modules() if not isinstance(m, fx.GraphModule)]
    leaves = [m for m in members if not list(m.children())]
    return not all(isinstance(m, _EVAL_PURE) or _stateless(m) for m in leaves)


def _stateless(m: nn.Module) -> bool:
    return not list(m.buffers(recurse=False)) and type(m).__module__.startswith("torch.nn")


class CompiledLoop:
    """One compiled ``T``-step loop (see the module docstring) and what it cost to build.

    ``full`` evaluates every prediction (the parameter gradients are taken on it); ``fast[s]``,
    used for IL's inference step ``s``, takes the predictions that read only clamped inputs as
    constants and has energy terms only where the error front has arrived (the eager loop's
    event-driven skips, fixed per step at trace time).
    """

    def __init__(self, full, fast: list, setup: Setup, mode: str, lr: float, backend: str):
        self.gm, self.compile_seconds, self.calls = full, 0.0, 0
        steps, gamma = setup.steps, setup.gamma

        def bind(gm: fx.GraphModule) -> Callable:
            """``energy(params, xs, head, tail)`` of ``gm``, on the parameters it holds."""
            names = [n for n, p in gm.named_parameters() if p.requires_grad]
            state = {  # buffers and frozen parameters: constants of the loop
                **dict(gm.named_buffers()),
                **{n: p.detach() for n, p in gm.named_parameters() if not p.requires_grad},
            }

            def energy(params: dict, xs: tuple, head: tuple, tail: tuple) -> torch.Tensor:
                mine = {n: params[n] for n in names}
                return torch.func.functional_call(gm, (mine, state), (*head, *xs, *tail))

            return energy

        e_full = bind(full)
        bound: dict[int, Callable] = {}
        e_fast = [bound.setdefault(id(gm), bind(gm)) for gm in fast]

        def loop(params: dict, xs: tuple, head: tuple, tail: tuple, consts: tuple, scale: float):
            energies = []
            grads_p = None
            for s in range(steps + 1):
                if mode == "il" and s < steps:
                    gx, f = torch.func.grad_and_value(e_fast[s], argnums=1)(
                        params, xs, head, (*tail, *consts)
                    )
                    xs = tuple(x - gamma * d for x, d in zip(xs, gx))
                elif mode == "il":
                    grads_p, f = torch.func.grad_and_value(e_full, argnums=0)(
                        params, xs, head, tail
                    )
                else:  # ipc: value nodes and parameters from the same state, every step
                    (gp, gx), f = torch.func.grad_and_value(e_full, argnums=(0, 1))(
                        params, xs, head, tail
                    )
                    params = {k: p - (lr * scale) * gp[k] for k, p in params.items()}
                    grads_p = params
                    if s < steps:
                        xs = tuple(x - gamma * d for x, d in zip(xs, gx))
                energies.append(f)
            return xs, grads_p, torch.stack(energies)

        # A code object of its own: dynamo caches compiled frames per code object (at most 8
        # variants each), and every loop here is a different program, not a recompilation.
        code = loop.__code__.replace(co_name=f"pc_inference_loop_{next(_SERIAL)}")
        fresh = types.FunctionType(code, loop.__globals__, code.co_name, None, loop.__closure__)
        self.fn = torch.compile(fresh, fullgraph=True, dynamic=False, backend=backend)

    def __call__(self, params, xs, head, tail, consts, scale):
        t0 = time.perf_counter()
        out = self.fn(params, xs, head, tail, consts, scale)
        self.compile_seconds = time.perf_counter() - t0 if self.calls == 0 else 0.0
        self.calls += 1
        return out


def run_compiled(
    plan: Plan,
    ff: FeedForward,
    target: Any,
    loss_fn: Callable,
    setup: Setup,
    *,
    mode: str,
    lr: float = 0.0,
    backend: str = "inductor",
) -> tuple[dict, list[float], CompiledLoop, list[str]]:
    """Run the compiled loop. Returns ``(param_grads_or_new_params, energies, loop, unreached)``;
    parameter gradients are already divided by ``w B`` (IL), or (iPC) the updated parameters."""
    if setup.value_optimizer is not None or setup.free_inputs:
        _refuse("value_optimizer and free_inputs are eager-only.")
    net = resolve(plan, ff, setup)
    inputs = [ff.env[s] for s in plan.input_slots]
    batch = batch_size(inputs)
    key = (
        mode,
        lr,
        backend,
        setup.steps,
        setup.gamma,
        setup.output,
        setup.output_precision,
        tuple(sorted(setup.precision.items())),
        tuple((k, id(f)) for k, f in sorted(setup.energies.items())),
        tuple(sorted(by for by in setup.clamp)),
        id(loss_fn),
        batch,
    )
    per_plan = _CACHE.setdefault(plan, {})
    loop = per_plan.get(key)
    if loop is None:
        full, meta_slots, _ = energy_module(plan, net, setup, loss_fn, batch, constants=False)
        fast, const_vids = [], []
        by_set: dict[frozenset, fx.GraphModule] = {}
        for step in range(setup.steps if mode == "il" else 0):
            active = frozenset(vid for vid, e in net.first_error.items() if e <= step)
            if active not in by_set:
                by_set[active], _, const_vids = energy_module(
                    plan, net, setup, loss_fn, batch, constants=True, active=active
                )
            fast.append(by_set[active])
        loop = CompiledLoop(full, fast, setup, mode, lr, backend)
        loop.meta_slots, loop.const_vids = meta_slots, const_vids
        per_plan[key] = loop
    params = {n: p.detach() for n, p in loop.gm.named_parameters() if p.requires_grad}
    xs = tuple(ff.flat[v.vid][0].detach() for v in net.free)
    head = (*inputs, target)
    tail = (*(net.clamped[vid][0] for vid in net.clamped), *(ff.env[s] for s in loop.meta_slots))
    scale = 1.0 / (float(setup.output_precision) * batch)
    consts = tuple(ff.mu[vid][0].detach() for vid in loop.const_vids)
    xs_end, p_out, energies = loop(params, xs, head, tail, consts, scale)
    if mode == "il":
        p_out = {k: g * scale for k, g in p_out.items()}
    by_param = {loop.gm.get_parameter(k): t for k, t in p_out.items()}
    return (
        by_param,
        [float(e) for e in energies],
        loop,
        unreached(net, net.first_error, setup.steps),
    )
