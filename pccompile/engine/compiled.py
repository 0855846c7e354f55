"""The compiled inference loop: ``IL(compile=True)``, ``IPC(compile=True, lr=...)``,
``EPC(compile=True)``, ``MCPC(compile=True)`` (its noise drawn before the loop, in the eager
loop's order, and passed in).

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

ePC's loop takes ``steps`` gradient steps on an energy graph over the errors (each free
vertex's value ``mu_v + eps_v``), then the parameter gradient of a "local" graph whose
squared-error terms are ``-sum(mu_v * eps_v)`` at the final states (see :func:`energy_module`).

Limits, each refused with a ConfigError naming the vertex: random or stateful vertices
(:func:`pccompile.ops.registry.needs_replay`: train-mode dropout and BatchNorm, a functional
dropout that draws in eval mode; their replayed state is eager-only), vertices with several
tensor outputs, value-node optimisers, traces, free inputs. Loops are cached per plan, setup and
input signature, with the loss keyed by :func:`loss_key` (its code and constants).
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
from ..ops.registry import needs_replay
from .evaluate import FeedForward
from .inference import NEVER, Setup, batch_size, resolve, unreached
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
    form: str = "state",
):
    """Generate the energy graph (see the module docstring).

    ``form``: ``"state"``: the value nodes are the variables (IL, iPC). ``"error"`` (ePC): the
    placeholders are the errors ``eps_v``, each free vertex's value is ``mu_v + eps_v``, and
    ``gm`` returns ``(F, (z_1, ..., z_n))``. ``"local"`` (ePC's weight update): the
    placeholders are the states and then the errors, predictions read the states, and a
    squared-error term is ``-sum(mu_v * eps_v)`` (its gradient in the parameters is the local
    update ``-(dmu/dtheta)^T eps``, with the error as relaxed).

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
        # placeholder names are identifiers: v.name (a module path) may hold dots
        xs[v.vid] = g.placeholder(f"{'e' if form == 'error' else 'x'}_{v.node.name}")
    es = {v.vid: g.placeholder(f"e_{v.node.name}") for v in net.free} if form == "local" else {}
    states: list[fx.Node] = []
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
        fn = setup.energies.get(v.name, squared_error)
        if form == "error" and v.vid in xs:  # z_v = mu_v + eps_v
            eps = x
            x = g.call_function(operator.add, (mu, eps))
            states.append(x)
            sq = g.call_function(torch.sum, (g.call_function(operator.mul, (eps, eps)),))
            term = (
                g.call_function(operator.mul, (sq, 0.5))
                if fn is squared_error
                else g.call_function(fn, (x, mu))
            )
        elif form == "local" and v.vid in es and fn is squared_error:
            prod = g.call_function(operator.mul, (mu, es[v.vid]))
            term = g.call_function(operator.neg, (g.call_function(torch.sum, (prod,)),))
        else:
            term = g.call_function(fn, (x, mu))
        env[n] = x
        pi = setup.precision.get(v.name, 1.0)
        terms.append(term if pi == 1.0 else g.call_function(operator.mul, (term, float(pi))))
    total = terms[0]
    for t in terms[1:]:
        total = g.call_function(operator.add, (total, t))
    g.output((total, tuple(states)) if form == "error" else total)
    gm = fx.GraphModule(plan.gm, g, class_name="PCEnergy")
    for fn in setup.energies.values():  # energies with parameters: reachable by functional_call
        if isinstance(fn, nn.Module):
            _refuse("energies with parameters (learned variances) are eager-only for now.")
    return gm, meta_slots, const_vids


def _replays_state(plan: Plan, v: Any) -> bool:
    """Whether re-evaluating ``v`` needs the eager loop's recorded RNG or buffers, by the
    registry's one classification (:func:`pccompile.ops.registry.needs_replay`), op by op
    inside a layer vertex: a functional dropout that draws in eval mode is random however its
    layer's modules look."""
    if v.rule is None or not (v.rule.replays_rng or v.rule.protects_buffers):
        return False
    if plan.training:
        return True
    if isinstance(v.module, fx.GraphModule):  # a layer vertex: its ops, with their own rules
        for n in v.module.graph.nodes:
            if n.op not in ("call_module", "call_function", "call_method"):
                continue
            mod = v.module.get_submodule(n.target) if n.op == "call_module" else None
            info = n.meta.get("pc")
            rule = info.rule if info is not None and info.rule is not None else v.rule
            if needs_replay(n, mod, rule):
                return True
        return False
    return needs_replay(v.node, v.module, v.rule)


class CompiledLoop:
    """One compiled ``T``-step loop (see the module docstring) and what it cost to build.

    ``full`` evaluates every prediction (the parameter gradients are taken on it); ``fast[s]``,
    used for IL's inference step ``s``, takes the predictions that read only clamped inputs as
    constants and has energy terms only where the error front has arrived (the eager loop's
    event-driven skips, fixed per step at trace time).
    """

    def __init__(
        self, full, fast: list, setup: Setup, mode: str, lr: float, backend: str, err=None
    ):
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
        e_local, e_err = e_full, (bind(err) if err is not None else None)
        bound: dict[int, Callable] = {}
        e_fast = [bound.setdefault(id(gm), bind(gm)) for gm in fast]

        def loop(params: dict, xs: tuple, head: tuple, tail: tuple, consts: tuple, scale: float):
            energies = []
            grads_p = None
            if mode == "epc":  # xs are the errors, from zero; then the local weight gradient
                for _ in range(steps):
                    ge, (f, _) = torch.func.grad_and_value(e_err, argnums=1, has_aux=True)(
                        params, xs, head, tail
                    )
                    xs = tuple(e - gamma * d for e, d in zip(xs, ge))
                    energies.append(f)
                f, zs = e_err(params, xs, head, tail)
                energies.append(f)
                grads_p = torch.func.grad(e_local, argnums=0)(params, (*zs, *xs), head, tail)
                return xs, grads_p, torch.stack(energies)
            if mode == "mcpc":  # IL's steps plus the pre-drawn Langevin noise (consts[s])
                for s in range(steps):
                    gx, f = torch.func.grad_and_value(e_full, argnums=1)(params, xs, head, tail)
                    xs = tuple(x - gamma * d + n for x, d, n in zip(xs, gx, consts[s]))
                    energies.append(f)
                grads_p, f = torch.func.grad_and_value(e_full, argnums=0)(params, xs, head, tail)
                energies.append(f)
                return xs, grads_p, torch.stack(energies)
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


def loss_key(fn: Any) -> Any:
    """What identifies a loss function for the cache: its code and the constants it computes
    with, not its identity, so a fresh ``lambda o, t: F.cross_entropy(o, t)`` per step reuses
    the loop compiled for the first (the loop calls the first one, which computes the same).
    Functions: code, defaults, globals' namespace and closure values; ``functools.partial``:
    the function's key and the bound arguments; a parameter-free ``nn.Module`` loss: its class
    and its plain attributes. Anything unhashable is keyed by identity."""

    def const(v: Any) -> Any:
        try:
            hash(v)
        except TypeError:
            return ("id", id(v))
        return ("id", id(v)) if isinstance(v, torch.Tensor) else v

    if isinstance(fn, functools.partial):
        kw = tuple(sorted((k, const(v)) for k, v in fn.keywords.items()))
        return ("partial", loss_key(fn.func), tuple(const(a) for a in fn.args), kw)
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__self__"):
        cells = tuple(const(c.cell_contents) for c in fn.__closure__ or ())
        defaults = tuple(const(d) for d in fn.__defaults__ or ())
        kwdefaults = tuple(sorted((k, const(v)) for k, v in (fn.__kwdefaults__ or {}).items()))
        return ("fn", code, defaults, kwdefaults, id(fn.__globals__), cells)
    if isinstance(fn, nn.Module) and not list(fn.parameters()) and not list(fn.buffers()):
        plain = {k: v for k, v in vars(fn).items() if not k.startswith("_")}
        return ("module", type(fn), tuple(sorted((k, const(v)) for k, v in plain.items())))
    return ("id", id(fn))


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
    noise: Callable | None = None,
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
        loss_key(loss_fn),
        batch,
    )
    per_plan = _CACHE.setdefault(plan, {})
    loop = per_plan.get(key)
    if loop is None and mode == "epc":
        local, meta_slots, _ = energy_module(
            plan, net, setup, loss_fn, batch, constants=False, form="local"
        )
        err, _, _ = energy_module(plan, net, setup, loss_fn, batch, constants=False, form="error")
        loop = CompiledLoop(local, [], setup, mode, lr, backend, err=err)
        loop.meta_slots, loop.const_vids = meta_slots, []
        per_plan[key] = loop
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
    if mode == "epc":
        xs = tuple(torch.zeros_like(x) for x in xs)
    head = (*inputs, target)
    tail = (*(net.clamped[vid][0] for vid in net.clamped), *(ff.env[s] for s in loop.meta_slots))
    scale = 1.0 / (float(setup.output_precision) * batch)
    consts = tuple(ff.mu[vid][0].detach() for vid in loop.const_vids)
    if mode == "mcpc":  # drawn in the eager loop's order: step by step, vertex by vertex
        consts = tuple(tuple(noise(x) for x in xs) for _ in range(setup.steps))
    xs_end, p_out, energies = loop(params, xs, head, tail, consts, scale)
    if mode in ("il", "epc", "mcpc"):
        p_out = {k: g * scale for k, g in p_out.items()}
    by_param = {loop.gm.get_parameter(k): t for k, t in p_out.items()}
    return (
        by_param,
        [float(e) for e in energies],
        loop,
        unreached(net, net.first_error, _reach_steps(mode, setup.steps)),
    )


def _reach_steps(mode: str, steps: int) -> int:
    """ePC's reverse pass brings the error to every connected vertex at the first step."""
    if mode == "epc":
        return NEVER - 1 if steps else 0
    return steps
