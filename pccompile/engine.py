"""The engine: value nodes, error nodes, local VJPs and the energy; one engine under every rule.

Reads: an annotated GraphModule and its PC graph (leveled or not).
Writes: a :class:`Plan`, compiled once per (model, training mode): per-vertex argument loaders,
routed parents (through identity vertices), parameter lists and the level schedule, so that a
learn step does no graph walks. At learn time the engine runs the feed-forward pass and the
primitives the rules are made of:

* value node ``x_v`` (a tensor per float output of the vertex), prediction ``mu_v = g_v(x_par)``,
  error node ``eps_v = x_v - mu_v``, energy ``F = sum_v 1/2 ||eps_v||^2 + L(mu_out, y)``;
* the local VJP of one vertex: ``J_{v,p}^T eps_v`` for each parent and ``(dg_v/dtheta)^T eps_v``
  for the vertex's own parameter use, by autograd over that vertex's function alone.

Sign convention: ``eps = x - mu``; the output's error is ``e_out = -dL/dmu_out``; a parameter use
contributes ``-(dg/dtheta)^T eps`` to ``p.grad`` (= ``+dL/dtheta`` when the rule is exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
from torch.fx.node import map_arg
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .annotate import is_float_tensor
from .checks import scalar_loss
from .errors import InputError, UnsupportedOpError
from .graph import depth, is_leveled
from .preserve import cuda_devices

__all__ = ["Plan", "Vertex", "FeedForward", "compile_plan", "feed_forward", "Grads"]

Tensor = torch.Tensor


@dataclass(eq=False)
class Vertex:
    """One PC vertex of a compiled plan (op, identity or the output)."""

    vid: int
    name: str
    kind: str  # "op" | "identity" | "output"
    level: int
    node: fx.Node | None = None
    rule: Any = None
    module: torch.nn.Module | None = None
    parents: tuple[int, ...] = ()  # routed parent vertices (inputs excluded)
    params: tuple[torch.nn.Parameter, ...] = ()  # trainable parameters used directly
    param_leaves: tuple[int, ...] = ()  # env slots of parameter transforms it reads
    source: int = -1  # identity vertices: the vertex they copy
    load: Callable[[list, list], tuple[tuple, dict]] | None = None
    slot: int = -1  # position of its FX node in Plan.nodes (env slot); -1 for identities
    feeds: tuple[bool, ...] = ()  # per parent: can feedback to it reach a parameter?


@dataclass(eq=False)
class Plan:
    """Everything a rule needs about one traced graph, precomputed."""

    gm: fx.GraphModule
    graph: nx.DiGraph
    training: bool
    nodes: list[fx.Node]
    roles: list[str]
    vertices: list[Vertex]
    vid_of_node: dict[fx.Node, int]
    by_level: list[list[int]]
    output: Vertex
    boundary: list[int]  # env slots of parameter transforms read by vertices
    prologue_params: tuple[torch.nn.Parameter, ...]
    live_params: tuple[torch.nn.Parameter, ...]
    n_inputs: int  # placeholders, including optional ones (see annotate.complete_inputs)
    modules: dict[int, torch.nn.Module] = field(default_factory=dict)
    chains: dict[int, list[int]] = field(
        default_factory=dict
    )  # vertex -> identity vertices below it

    depth: int = 0  # largest level of a non-input vertex
    leveled: bool = False  # every edge (out of a non-input) spans exactly one level
    written: frozenset[str] = frozenset()  # buffers the forward updates (effect nodes)

    @property
    def hidden(self) -> list[Vertex]:
        return [v for v in self.vertices if v.kind != "output"]


# ---------------------------------------------------------------------------------- compile
def compile_plan(gm: fx.GraphModule, graph: nx.DiGraph, training: bool) -> Plan:
    """Compile the schedule of ``graph`` (PC graph of annotated ``gm``) into a :class:`Plan`."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    roles = [n.meta["pc"].role for n in nodes]
    by_name = {n.name: n for n in nodes}

    # Vertex ids: op/output vertices in FX order, identity vertices after them.
    live = [n for n in nodes if n.name in graph and graph.nodes[n.name]["kind"] in ("op", "output")]
    names = [n.name for n in live] + [
        v for v, d in graph.nodes(data=True) if d["kind"] == "identity"
    ]
    vid = {name: i for i, name in enumerate(names)}
    routes: dict[tuple[str, str], str] = {}
    for v, d in graph.nodes(data=True):
        if d["kind"] == "identity" and graph.nodes[d["target"]]["level"] + 1 == d["level"]:
            routes[(d["source"], d["target"])] = v

    def route(u: str, c: str) -> int:
        return vid[routes.get((u, c), u)]

    modules: dict[int, torch.nn.Module] = {}
    for i, n in enumerate(nodes):
        if n.op == "call_module":
            modules[i] = gm.get_submodule(n.target)

    vertices: list[Vertex] = []
    boundary: set[int] = set()
    for name in names:
        d = graph.nodes[name]
        if d["kind"] == "identity":
            vertices.append(
                Vertex(
                    vid[name],
                    name,
                    "identity",
                    d["level"],
                    parents=(vid[_pred(graph, name)],),
                    source=vid[_pred(graph, name)],
                )
            )
            continue
        node = by_name[name]
        src: dict[fx.Node, tuple] = {}
        parents: list[int] = []
        params: list[torch.nn.Parameter] = []
        pleaves: list[int] = []
        stack = list(node.all_input_nodes)
        while stack:
            a = stack.pop()
            if a in src:
                continue
            info = a.meta["pc"]
            if info.role == "struct":  # data movement: resolved per reader, with its routing
                src[a] = (2,)
                stack.extend(a.all_input_nodes)
            elif info.role == "vertex":
                if a.name not in vid:  # cannot happen for live vertices; guard anyway
                    raise UnsupportedOpError(f"Node {name!r} reads dead vertex {a.name!r}.")
                r = route(a.name, name)
                src[a] = (1, r)
                if r not in parents:
                    parents.append(r)
            elif info.role == "param":
                src[a] = (0, index[a])
                p = _fetch(gm, a.target)
                if all(p is not q for q in params):
                    params.append(p)
            elif info.role == "param_op":
                src[a] = (0, index[a])
                boundary.add(index[a])
                pleaves.append(index[a])
            else:
                src[a] = (0, index[a])
        if node.op == "output" and (params or pleaves):
            raise UnsupportedOpError(
                "The model returns a parameter (or a function of parameters only) directly; "
                "pccompile needs every output to be computed from the inputs."
            )
        module = modules.get(index[node])
        if module is not None:
            for p in module.parameters():
                if p.requires_grad and all(p is not q for q in params):
                    params.append(p)
        vertices.append(
            Vertex(
                vid[name],
                name,
                "output" if node.op == "output" else "op",
                d["level"],
                node,
                node.meta["pc"].rule,
                module,
                tuple(parents),
                tuple(params),
                tuple(pleaves),
                load=_make_loader(node, src),
                slot=index[node],
            )
        )
    n_levels = 1 + max(v.level for v in vertices)
    by_level: list[list[int]] = [[] for _ in range(n_levels)]
    # Within a level, visit vertices latest-consumer first: a vertex with several children then
    # sums their feedback in the order autograd's engine does (reverse execution order), so float32
    # results are not just equal up to rounding but usually bitwise equal to BP's.
    position = {n.name: i for i, n in enumerate(nodes)}
    key = lambda v: position[graph.nodes[v.name]["target"] if v.kind == "identity" else v.name]
    for v in sorted(vertices, key=key, reverse=True):
        by_level[v.level].append(v.vid)

    prologue_params: list[torch.nn.Parameter] = []
    for i in sorted(boundary):
        for p in _param_ancestors(gm, nodes[i]):
            if all(p is not q for q in prologue_params):
                prologue_params.append(p)
    live_params: list[torch.nn.Parameter] = []
    for p in [p for v in vertices for p in v.params] + prologue_params:
        if all(p is not q for q in live_params):
            live_params.append(p)
    output = next(v for v in vertices if v.kind == "output")
    # A vertex "needs feedback" if a parameter sits at or above it; feedback to the others (e.g.
    # a slice of a clamped input) changes nothing the efficient schedules return.
    needs = [False] * len(vertices)
    for v in sorted(vertices, key=lambda v: -v.level):  # parents before children
        src = [v.source] if v.kind == "identity" else v.parents
        needs[v.vid] = bool(v.params or v.param_leaves) or any(needs[r] for r in src)
    for v in vertices:
        v.feeds = tuple(needs[r] for r in v.parents)
    chains: dict[int, list[int]] = {}
    for v in sorted((v for v in vertices if v.kind == "identity"), key=lambda v: -v.level):
        root = v.source
        while vertices[root].kind == "identity":
            root = vertices[root].source
        chains.setdefault(root, []).append(v.vid)
    plan = Plan(
        gm,
        graph,
        training,
        nodes,
        roles,
        vertices,
        {by_name[n]: vid[n] for n in names[: len(live)]},
        by_level,
        output,
        sorted(boundary),
        tuple(prologue_params),
        tuple(live_params),
        sum(1 for r in roles if r == "input"),
        modules,
        chains,
        depth(graph),
        is_leveled(graph),
    )
    plan.written = frozenset(n.args[0].target for n, r in zip(nodes, roles) if r == "effect")
    return plan


def _pred(graph: nx.DiGraph, name: str) -> str:
    (p,) = list(graph.predecessors(name))
    return p


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _param_ancestors(gm: fx.GraphModule, node: fx.Node) -> list[torch.nn.Parameter]:
    """The trainable parameters a parameter transform is computed from: parameters read
    directly (get_attr) and the weights of leaf modules on the way (``self.pos(arange(T))``)."""
    seen, stack, out = set(), [node], []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.meta["pc"].role == "param":
            out.append(_fetch(gm, n.target))
        elif n.op == "call_module":
            out.extend(p for p in gm.get_submodule(n.target).parameters() if p.requires_grad)
        stack.extend(n.all_input_nodes)
    return out


def _make_loader(node: fx.Node, src: dict[fx.Node, tuple]) -> Callable:
    """A function ``(env, leaves) -> (args, kwargs)`` for ``node``, resolving each argument to
    the value node of its routed parent, a constant of the pass, or (for struct nodes: tuple
    packing and unpacking) the same movement applied to the reader's own view of the values."""
    args, kwargs = node.args, node.kwargs

    def get(n: fx.Node) -> Any:
        s = src[n]
        if s[0] == 0:
            return load_env[0][s[1]]
        if s[0] == 1:
            return load_env[1][s[1]]
        if n.op == "call_module":  # nn.Identity: its input, unchanged
            return get(n.args[0])
        return n.target(*map_arg(n.args, get), **map_arg(n.kwargs, get))

    load_env: list = [None, None]

    def load(env: list, leaves: list) -> tuple[tuple, dict]:
        load_env[0], load_env[1] = env, leaves
        try:
            return map_arg(args, get), map_arg(kwargs, get)
        finally:
            load_env[0] = load_env[1] = None

    return load


# ------------------------------------------------------------------------------ evaluation
@dataclass
class VertexState:
    """What a vertex's first evaluation started from, recorded in the feed-forward pass so that
    every re-evaluation sees the same: the RNG state (same dropout masks) and the module's
    buffers (a stateful module's update is made once, and re-evaluated from the state before it:
    BatchNorm statistics, a spectral norm's power iteration)."""

    rng: tuple | None = None
    buffers: dict[str, Tensor] | None = None


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
    return state


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
    with torch.random.fork_rng(devices=devices, enabled=rng is not None):
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
    nodes, roles, vid_of = plan.nodes, plan.roles, plan.vid_of_node
    env: list = [None] * len(nodes)
    index = {n: i for i, n in enumerate(nodes)}
    get = lambda n: env[index[n]]
    k_in = 0
    for i, node in enumerate(nodes):
        role = roles[i]
        if role == "input":
            env[i] = inputs[k_in]
            k_in += 1
        elif role in ("param", "const"):
            env[i] = _fetch(plan.gm, node.target)
            if node.target in plan.written:  # readers keep the value they read (re-evaluations)
                env[i] = env[i].detach().clone()
        elif role == "output":
            continue
        elif role == "effect":  # the forward's buffer update, made once per pass
            with torch.no_grad():
                _fetch(plan.gm, node.args[0].target).copy_(get(node.args[1]))
        elif role == "vertex" and node in vid_of:
            env[i] = on_vertex(plan.vertices[vid_of[node]], env)
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
    devices = cuda_devices(inputs)

    def vertex(v: Vertex, env: list) -> Any:
        if record_state and (st := record_state_of(v, devices)) is not None:
            states[v.vid] = st
        with torch.enable_grad():
            out = call_vertex(plan, v, env, leaves, recompute=False)
        value, fl, m = leafify(out)
        leaves[v.vid], flat[v.vid], mu[v.vid] = value, fl, m
        for c in plan.chains.get(v.vid, ()):  # identity vertices start as copies
            leaves[c], flat[c], mu[c] = value, fl, fl
        return value

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

    env = walk(plan, inputs, vertex, param_op)
    out_args, _ = plan.output.load(env, leaves)
    output = out_args[0]
    with torch.enable_grad():
        loss = scalar_loss(loss_fn(output, target))
    return FeedForward(env, leaves, flat, mu, states, devices, loss, output, boundary_out)


# ---------------------------------------------------------------------------------- grads
class Grads:
    """Per-use parameter contributions, summed and only written to ``p.grad`` after inference.

    Ownership follows autograd's ``AccumulateGrad``: a tensor autograd returned is *borrowed*
    (it may be an error node, or the very tensor handed to another parameter: the VJP of
    ``h + a + b`` returns one tensor for both ``a`` and ``b``); it is never written in place.
    The first accumulation into a borrowed entry allocates an owned sum, and :meth:`write`
    steals a borrowed tensor for ``p.grad`` only when no other parameter's gradient shares its
    memory; otherwise it copies.
    """

    def __init__(self) -> None:
        self.params: dict[torch.nn.Parameter, Tensor] = {}
        self.leaves: dict[int, Tensor] = {}
        self.written = True  # False: the rule applied its updates itself (iPC with lr > 0)
        self._owned: dict[
            int, Tensor
        ] = {}  # id -> tensor allocated here (kept alive: ids stay unique)

    def _own(self, t: Tensor) -> Tensor:
        self._owned[id(t)] = t
        return t

    def _add(self, table: dict, key, g: Tensor, scale: float) -> None:
        cur = table.get(key)
        if cur is None:
            table[key] = g if scale == 1.0 else self._own(g * scale)
        elif id(cur) in self._owned:
            cur.add_(g, alpha=scale)
        else:
            table[key] = self._own(torch.add(cur, g, alpha=scale))

    def add_param(self, p: torch.nn.Parameter, g: Tensor, scale: float = -1.0) -> None:
        self._add(self.params, p, g, scale)

    def add_leaf(self, slot: int, g: Tensor, scale: float = -1.0) -> None:
        self._add(self.leaves, slot, g, scale)

    def finish(self, plan: Plan, ff: FeedForward, retain: bool = False) -> None:
        """Carry the contributions to parameter transforms back to the parameters (one VJP
        through the parameter-only part of the graph, after inference)."""
        if not self.leaves or not plan.prologue_params:
            return
        slots = [s for s in self.leaves if ff.boundary_out[s].requires_grad]
        if not slots:
            return
        outs = [ff.boundary_out[s] for s in slots]
        cots = [self.leaves[s] for s in slots]
        grads = torch.autograd.grad(
            outs, plan.prologue_params, cots, allow_unused=True, retain_graph=retain
        )
        for p, g in zip(plan.prologue_params, grads):
            if g is not None:
                self.add_param(p, g, 1.0)

    def write(self, plan: Plan) -> None:
        """Accumulate into ``p.grad`` like ``loss.backward()``; parameters the graph uses but no
        update reached (too few steps) get zeros. No two parameters end up sharing a ``.grad``."""
        if not self.written:
            return
        given: set[tuple[int, int]] = set()  # memory handed to a p.grad in this write
        with torch.no_grad():
            for p in plan.live_params:
                g = self.params.get(p)
                if g is None:
                    g = torch.zeros_like(p)
                if p.grad is not None:
                    p.grad.add_(g)
                    continue
                key = _memory(g)
                # As AccumulateGrad: steal autograd's tensor only if it is whole (not a view into
                # something larger), laid out like the parameter, and no other parameter's
                # gradient holds the same memory; otherwise copy it into the parameter's layout.
                whole = g._base is None or (g._base.numel() == g.numel() and g.is_contiguous())
                steal = whole and g.dtype == p.dtype and g.stride() == p.stride()
                if steal and (key not in given or g.numel() == 0):
                    p.grad = g
                else:
                    p.grad = torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)
                given.add(key)


def _memory(t: Tensor) -> tuple[int, int]:
    """Where a tensor's elements start (storage, offset); its identity where it has no storage
    Python can read (complex/conjugate views)."""
    try:
        return t.untyped_storage().data_ptr(), t.storage_offset()
    except RuntimeError:
        return id(t), 0


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
    inputs = [t for r in v.parents for t in flat[r]]
    if not inputs:
        return
    if not loss.requires_grad:
        raise InputError("The loss does not depend on the model output; nothing to learn from.")
    res = torch.autograd.grad(
        loss, inputs, torch.full_like(loss, -weight), allow_unused=True, retain_graph=retain
    )
    k = 0
    for r in v.parents:
        n = len(flat[r])
        add_to(acc, r, res[k : k + n])
        k += n
