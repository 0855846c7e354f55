"""Evaluation: the feed-forward pass and every re-evaluation of a vertex during inference.

Reads: a compiled :class:`~pccompile.engine.plan.Plan`, a batch and a loss function.
Writes: a :class:`FeedForward` (the value nodes, the predictions with their local autograd graphs,
the state each stochastic or stateful vertex started from); the forward's buffer updates, made
once per pass as BP's forward makes them.
Invariants: the feed-forward pass runs every node once, in the traced order, so random draws and
running statistics happen exactly as in BP's forward; a re-evaluation (``recompute=True``)
starts from the vertex's recorded state and changes no state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_arg
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..checks import scalar_loss
from ..errors import UnsupportedOpError
from ..frontend.annotate import is_float_tensor
from ..preserve import cuda_devices
from .plan import Plan, Vertex, fetch

__all__ = [
    "FeedForward",
    "VertexState",
    "call_vertex",
    "feed_forward",
    "leafify",
    "rebuild",
    "record_state_of",
    "refresh",
    "walk",
]

Tensor = torch.Tensor
_NO_SWITCH = nullcontext()


@dataclass
class VertexState:
    """What a vertex's first evaluation started from, recorded in the feed-forward pass so that
    every re-evaluation sees the same: the RNG state (same dropout masks) and the module's
    buffers (a stateful module's update is made once, and re-evaluated from the state before it:
    BatchNorm statistics, a spectral norm's power iteration)."""

    rng: tuple | None = None
    buffers: dict[str, Tensor] | None = None
    # modules of the vertex with forward (pre-)hooks, and per module the hooks that are part of
    # the vertex's function (they returned a value or changed the module); the others observe
    # (a feature-capturing hook) and fire once per learn, in the feed-forward pass, as in BP
    hooked: list | None = None
    active_hooks: dict[int, set] | None = None


def _rng_snapshot(devices: list[int]) -> tuple:
    cuda = tuple(torch.cuda.get_rng_state(d) for d in devices)
    return torch.get_rng_state(), cuda


def record_state_of(v: Vertex, devices: list[int]) -> VertexState | None:
    """The state a re-evaluation of ``v`` must start from (None: it needs none)."""
    rule = v.rule
    if not (rule.replays_rng or rule.protects_buffers):
        return None
    state = VertexState()
    if rule.replays_rng:
        state.rng = _rng_snapshot(devices)
    if rule.protects_buffers and v.module is not None:
        state.buffers = {n: b.detach().clone() for n, b in v.module.named_buffers()}
        hooked = [m for m in v.module.modules() if m._forward_pre_hooks or m._forward_hooks]
        if hooked:
            state.hooked, state.active_hooks = hooked, {}
    return state


_HOOKS = ("_forward_pre_hooks", "_forward_hooks")


@contextmanager
def _watching_hooks(state: VertexState) -> Iterator[None]:
    """Run the feed-forward call with every forward hook of the vertex wrapped, recording
    which hooks are part of its function: they return a value (replace the inputs or the
    output) or rebind a module attribute (the old spectral-norm API's pre-hook sets
    ``weight``)."""
    saved = []
    for m in state.hooked:
        for kind in _HOOKS:
            hooks = getattr(m, kind)
            saved.append((hooks, dict(hooks)))
            for hid, fn in list(hooks.items()):
                hooks[hid] = _watched(fn, m, (kind, hid), state.active_hooks)
    try:
        yield
    finally:
        for hooks, original in saved:  # a hook that removed itself stays removed
            for hid, fn in original.items():
                if hid in hooks:
                    hooks[hid] = fn


def _watched(fn: Callable, m: torch.nn.Module, key: tuple, active: dict) -> Callable:
    def hook(*args: Any, **kwargs: Any) -> Any:
        before = {k: id(x) for k, x in vars(m).items()}
        res = fn(*args, **kwargs)
        if res is not None or {k: id(x) for k, x in vars(m).items()} != before:
            active.setdefault(id(m), set()).add(key)
        return res

    return hook


@contextmanager
def _quiet_hooks(state: VertexState) -> Iterator[None]:
    """Re-evaluate with only the hooks that are part of the vertex's function (see
    :func:`_watching_hooks`): observers do not fire again."""
    saved = []
    for m in state.hooked:
        keep = state.active_hooks.get(id(m), ())
        for kind in _HOOKS:
            hooks = m.__dict__[kind]
            saved.append((m, kind, hooks))
            m.__dict__[kind] = type(hooks)((h, f) for h, f in hooks.items() if (kind, h) in keep)
    try:
        yield
    finally:
        for m, kind, hooks in saved:
            m.__dict__[kind] = hooks


def call_vertex(
    plan: Plan,
    v: Vertex,
    env: list,
    leaves: list,
    *,
    recompute: bool,
    state: VertexState | None = None,
    devices: list[int] = (),
) -> Any:
    """Evaluate ``g_v`` on the current value nodes of its parents.

    With ``recompute=True`` the call is a *re-evaluation* during inference: it starts from the
    vertex's recorded feed-forward :class:`VertexState` (its module's buffers as copies, its
    RNG state), so it computes what the feed-forward pass computed and changes no state.
    """
    args, kwargs = v.load(env, leaves)
    node, rule = v.node, v.rule
    if not recompute:
        return _invoke(node, v.module, args, kwargs)
    rng = state.rng if state is not None and rule.replays_rng else None
    hooks = _quiet_hooks(state) if state is not None and state.hooked else _NO_SWITCH
    with torch.random.fork_rng(devices=devices, enabled=rng is not None), hooks:
        if rng is not None:
            _rng_restore(rng, devices)
        if rule.protects_buffers and v.module is not None:
            saved = state.buffers if state is not None else None
            source = saved.items() if saved is not None else v.module.named_buffers()
            bufs = {n: b.clone() for n, b in source}
            return torch.func.functional_call(v.module, bufs, args, kwargs)
        if rule.protects_buffers:  # a stateful function: running statistics in its arguments
            copy = lambda a: a.clone() if isinstance(a, Tensor) and not a.requires_grad else a
            args, kwargs = tree_map(copy, args), tree_map(copy, kwargs)
        return _invoke(node, v.module, args, kwargs)


def _rng_restore(state: tuple, devices: list[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, d)


def _invoke(node: fx.Node, module: torch.nn.Module | None, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


def leafify(out: Any) -> tuple[Any, list[Tensor], list[Tensor]]:
    """Split a vertex output into (value-node structure, its float leaves, the predictions).

    The value node starts at the feed-forward value; it is a fresh autograd leaf (a detached
    alias, never mutated) so a vertex's VJP stops at its parents.
    """
    if isinstance(out, Tensor):
        leaf = out.detach().requires_grad_()
        return leaf, [leaf], [out]
    if type(out) is tuple and all(type(t) is Tensor and t.is_floating_point() for t in out):
        leaves = [t.detach().requires_grad_() for t in out]  # the common multi-output case
        return tuple(leaves), leaves, list(out)
    flat, spec = tree_flatten(out)
    values, leaves, mus = [], [], []
    for t in flat:
        if is_float_tensor(t):
            leaf = t.detach().requires_grad_()
            leaves.append(leaf)
            mus.append(t)
            values.append(leaf)
        else:
            values.append(t)
    return tree_unflatten(values, spec), leaves, mus


def rebuild(template: Any, flat: list[Tensor]) -> Any:
    """The structure of ``template`` with its float tensors replaced, in order, by ``flat``."""
    if isinstance(template, Tensor):
        return flat[0]
    values, spec = tree_flatten(template)
    it = iter(flat)
    return tree_unflatten([next(it) if is_float_tensor(t) else t for t in values], spec)


@dataclass(eq=False)
class FeedForward:
    """The feed-forward pass of one batch: where every rule starts."""

    def release(self, v: Vertex) -> None:
        """Drop this pass's references to ``v``'s value node once no rule step needs it, so
        activations are freed progressively, as BP's backward frees its saved tensors."""
        self.mu[v.vid] = self.flat[v.vid] = self.leaves[v.vid] = None
        if v.slot >= 0:
            self.env[v.slot] = None

    env: list
    leaves: list  # per vertex id: value-node structure
    flat: list  # per vertex id: list of value-node tensors
    mu: list  # per vertex id: list of predictions (with their local autograd graphs)
    state: dict[int, VertexState]
    devices: list[int]
    loss: Tensor
    output: Any
    boundary_out: dict[int, Any]
    root: Any = None  # the user's model, to name what a loss read (set by PCModule.learn)


def walk(
    plan: Plan,
    inputs: tuple,
    on_vertex: Callable[[Vertex, list], Any],
    on_param_op: Callable[[int, Any], Any] | None = None,
) -> list:
    """Evaluate every node of ``plan`` once, in the traced order, and return the env.

    Inputs, constants, struct and meta nodes are handled here; ``on_vertex(v, env)`` returns the
    value the env holds for a live vertex (its value node); ``on_param_op(slot, out)`` may replace
    a parameter transform's value. Vertices that cannot reach the output run under no_grad.
    """
    nodes, roles, vertex_at, slot_of = plan.nodes, plan.roles, plan.vertex_at, plan.slot_of
    env: list = [None] * len(nodes)
    get = lambda n: env[slot_of[n]]
    k_in = 0
    for i, node in enumerate(nodes):
        v = vertex_at[i]
        if v is not None:  # a live vertex or identity vertex
            env[i] = on_vertex(v, env)
            continue
        role = roles[i]
        if role == "input":
            env[i] = inputs[k_in]
            k_in += 1
        elif role in ("param", "const"):
            env[i] = fetch(plan.gm, node.target)
            if node.target in plan.written:  # readers keep the value they read (re-evaluations)
                env[i] = env[i].detach().clone()
        elif role == "output":
            continue
        elif role == "effect":  # the forward's buffer update, made once per pass
            with torch.no_grad():
                fetch(plan.gm, node.args[0].target).copy_(get(node.args[1]))
        elif role == "param_op":
            with torch.enable_grad():
                out = _invoke(
                    node, plan.modules.get(i), map_arg(node.args, get), map_arg(node.kwargs, get)
                )
            env[i] = out if on_param_op is None else on_param_op(i, out)
        else:  # struct, meta, and vertices that cannot reach the output (their error is zero)
            with torch.no_grad():
                env[i] = _invoke(
                    node, plan.modules.get(i), map_arg(node.args, get), map_arg(node.kwargs, get)
                )
    return env


def feed_forward(
    plan: Plan, inputs: tuple, target: Any, loss_fn: Callable, *, record_state: bool
) -> FeedForward:
    """Run the feed-forward pass: every node once, in the traced order (so random draws and
    running statistics happen exactly as in BP's forward), building each vertex's local graph.
    """
    n_v = len(plan.vertices)
    leaves: list = [None] * n_v
    flat: list = [None] * n_v
    mu: list = [None] * n_v
    states: dict[int, VertexState] = {}
    boundary = set(plan.boundary)
    boundary_out: dict[int, Any] = {}
    devices: list[int] = []  # cuda_devices(inputs), without the pytree walk for plain tensors
    for x in inputs:
        if type(x) is not Tensor:
            devices = cuda_devices(inputs)
            break
        if x.is_cuda and (x.device.index or 0) not in devices:
            devices = sorted(devices + [x.device.index or 0])

    def vertex(v: Vertex, env: list) -> Any:  # runs with grad enabled (see below)
        vid = v.vid
        if v.kind == "identity":  # starts as a copy of its source: same value node
            s = v.source
            leaves[vid], flat[vid], mu[vid] = leaves[s], flat[s], flat[s]
            return leaves[s]
        st = None
        if record_state and (st := record_state_of(v, devices)) is not None:
            states[vid] = st
        if record_state and st is not None and st.hooked:
            with _watching_hooks(st):
                args, kwargs = v.load(env, leaves)
                out = _invoke(v.node, v.module, args, kwargs)
        elif v.call is not None:  # call_vertex(recompute=False), inlined
            out = v.call(env, leaves)
        else:
            args, kwargs = v.load(env, leaves)
            out = _invoke(v.node, v.module, args, kwargs)
        if type(out) is Tensor:  # leafify's common case, inlined
            leaf = out.detach().requires_grad_()
            leaves[vid], flat[vid], mu[vid] = leaf, [leaf], [out]
            return leaf
        leaves[vid], flat[vid], mu[vid] = leafify(out)
        return leaves[vid]

    def param_op(slot: int, out: Any) -> Any:
        if slot not in boundary:
            return out
        if not isinstance(out, Tensor):
            raise UnsupportedOpError(
                f"Node {plan.nodes[slot].name!r} passes a {type(out).__name__} of parameters to "
                f"a vertex; pccompile supports parameter transforms that are tensors."
            )
        boundary_out[slot] = out
        return out.detach().requires_grad_()

    # One grad-mode switch for the whole pass: walk runs the nodes that must not record a graph
    # (struct, meta, effects, vertices that cannot reach the output) under no_grad itself.
    with _NO_SWITCH if torch.is_grad_enabled() else torch.enable_grad():  # switching costs time
        env = walk(plan, inputs, vertex, param_op)
        output = plan.read_output(env, leaves)
        loss = scalar_loss(loss_fn(output, target))
    return FeedForward(env, leaves, flat, mu, states, devices, loss, output, boundary_out)


def refresh(plan: Plan, ff: FeedForward) -> None:
    """Re-evaluate the parameter transforms (``W0 + dW``, ``W0 + A @ B``) after the parameters
    moved in place (iPC's in-loop steps), so the vertices read the current weights.

    The value a vertex reads (the detached leaf in ``ff.env``) is updated in place, keeping its
    identity for every list that holds it; ``ff.boundary_out`` gets the new transform's graph
    (the VJP of :meth:`Grads.finish` runs through it)."""
    if not plan.boundary:
        return
    boundary = set(plan.boundary)
    get = lambda n: ff.env[plan.slot_of[n]]
    for i, node in enumerate(plan.nodes):
        if plan.roles[i] != "param_op":
            continue
        with torch.enable_grad():
            out = _invoke(
                node, plan.modules.get(i), map_arg(node.args, get), map_arg(node.kwargs, get)
            )
        if i in boundary:
            ff.boundary_out[i] = out
            with torch.no_grad():
                ff.env[i].copy_(out)
        else:
            ff.env[i] = out
