"""Plan: the schedule of one annotated, levelled GraphModule, compiled once.

Reads: a GraphModule after :mod:`pccompile.frontend` (roles, rules and levels in
``node.meta["pc"]``, identity vertices present as FX nodes).
Writes: a :class:`Plan`: one :class:`Vertex` per live vertex (op, identity or the output) with
its argument loader, parents, parameter uses and level; the vertices grouped by level in the
order the rules visit them; the parameter lists. A learn step then does no graph walks.

Each argument of a vertex is resolved once, at compile time, to an :class:`ArgSource`: the value
node of a parent vertex (``value``), a slot of the feed-forward environment (``env``: inputs,
constants, parameters and parameter transforms), or data movement (``moved``: tuple packing,
``getitem``) re-applied to the reader's own view of the values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch.fx.node import map_arg

from ..errors import UnsupportedOpError
from ..frontend.export import unflatten_output
from ..frontend.names import vertex_name

__all__ = ["ArgSource", "Plan", "Vertex", "compile_plan", "fetch"]


class ArgSource(NamedTuple):
    """Where one argument of a vertex comes from (see the module docstring)."""

    kind: str  # "value" | "env" | "moved"
    index: int = -1  # vertex id ("value") or env slot ("env")


MOVED = ArgSource("moved")


@dataclass(eq=False)
class Vertex:
    """One PC vertex of a compiled plan (op, identity or the output)."""

    vid: int
    name: str
    kind: str  # "op" | "identity" | "output"
    level: int
    node: fx.Node
    slot: int  # position of its FX node in Plan.nodes (its env slot)
    rule: Any = None
    module: torch.nn.Module | None = None
    parents: tuple[int, ...] = ()  # parent vertices it reads (inputs excluded)
    params: tuple[torch.nn.Parameter, ...] = ()  # trainable parameters used directly
    param_leaves: tuple[int, ...] = ()  # env slots of parameter transforms it reads
    source: int = -1  # identity vertices: the vertex they copy
    load: Callable[[list, list], tuple[tuple, dict]] | None = None
    feeds: tuple[bool, ...] = ()  # per parent: can feedback to it reach a parameter?
    input_slots: tuple[int, ...] = ()  # env slots of the model inputs it reads
    fed: tuple[int, ...] = ()  # the parents whose ``feeds`` is True, in order (pruned VJPs)
    # ``(env, values) -> output``: load and call in one, for a call_module/call_function node
    # whose only argument is a value node (None otherwise: use ``load``)
    call: Callable[[list, list], Any] | None = None


@dataclass(eq=False)
class Plan:
    """Everything a rule needs about one traced graph, precomputed."""

    gm: fx.GraphModule
    training: bool
    nodes: list[fx.Node]
    roles: list[str]
    vertices: list[Vertex]
    vid_of_node: dict[fx.Node, int]
    by_level: list[list[int]]  # per level: vertex ids, latest consumer first
    output: Vertex
    boundary: list[int]  # env slots of parameter transforms read by vertices
    prologue_params: tuple[torch.nn.Parameter, ...]  # parameters behind those transforms
    live_params: tuple[torch.nn.Parameter, ...]  # every parameter a learn step writes
    n_inputs: int  # placeholders, including optional ones (see annotate.complete_inputs)
    modules: dict[int, torch.nn.Module]  # env slot -> the module a call_module node calls
    depth: int  # largest level of a non-input vertex
    leveled: bool  # every edge out of a non-input spans exactly one level
    written: frozenset[str]  # buffers the forward updates (effect nodes)
    slot_of: dict[fx.Node, int] = field(default_factory=dict)  # node -> its env slot
    # per env slot: the vertex (op or identity) evaluated there, None elsewhere
    vertex_at: list[Vertex | None] = field(default_factory=list)
    # the inputs need no completion: plain positional placeholders, no defaults, no input spec
    plain_inputs: bool = False
    out_spec: bool = True  # the output node holds flat values to unflatten (torch.export)

    @property
    def hidden(self) -> list[Vertex]:
        return [v for v in self.vertices if v.kind != "output"]

    @property
    def input_slots(self) -> list[int]:
        """Env slots of the model inputs, in the order the model takes them."""
        return [i for i, r in enumerate(self.roles) if r == "input"]

    def read_output(self, env: list, values: list) -> Any:
        """The model's output from the current value nodes (its structure rebuilt for graphs
        captured by torch.export, whose output node holds flat values)."""
        flat = self.output.load(env, values)[0][0]
        return flat if not self.out_spec else unflatten_output(self.gm, flat)


def compile_plan(gm: fx.GraphModule, training: bool) -> Plan:
    """Compile the schedule of an annotated, levelled ``gm`` into a :class:`Plan`."""
    nodes = list(gm.graph.nodes)
    slot = {n: i for i, n in enumerate(nodes)}
    roles = [n.meta["pc"].role for n in nodes]
    modules = {i: gm.get_submodule(n.target) for i, n in enumerate(nodes) if n.op == "call_module"}
    scheduled = [n for n in nodes if _scheduled(n)]
    vid = {n: i for i, n in enumerate(scheduled)}
    vertices: list[Vertex] = []
    boundary: set[int] = set()
    for node in scheduled:
        info = node.meta["pc"]
        common = dict(
            vid=vid[node], name=vertex_name(node), level=info.level, node=node, slot=slot[node]
        )
        if info.role == "identity":
            (src,) = node.all_input_nodes
            vertices.append(Vertex(kind="identity", parents=(vid[src],), source=vid[src], **common))
            continue
        reads = _resolve_args(gm, node, slot, vid)
        boundary.update(reads.param_leaves)
        module = modules.get(slot[node])
        vertices.append(
            Vertex(
                kind="output" if node.op == "output" else "op",
                rule=info.rule,
                module=module,
                parents=tuple(reads.parents),
                params=_with_module_params(reads.params, module),
                param_leaves=tuple(reads.param_leaves),
                load=_make_loader(node, reads.sources),
                input_slots=tuple(
                    i for k, i in reads.sources.values() if k == "env" and roles[i] == "input"
                ),
                call=_direct_call(node, reads.sources, module),
                **common,
            )
        )
    _set_feeds(vertices)
    prologue = _unique(p for i in sorted(boundary) for p in _param_ancestors(gm, nodes[i]))
    return Plan(
        gm=gm,
        training=training,
        nodes=nodes,
        roles=roles,
        vertices=vertices,
        vid_of_node=vid,
        by_level=_by_level(vertices),
        output=next(v for v in vertices if v.kind == "output"),
        boundary=sorted(boundary),
        prologue_params=prologue,
        live_params=_unique([p for v in vertices for p in v.params] + list(prologue)),
        n_inputs=roles.count("input"),
        modules=modules,
        depth=gm.meta["pc_depth"],
        leveled=gm.meta["pc_leveled"],
        written=frozenset(n.args[0].target for n, r in zip(nodes, roles) if r == "effect"),
        slot_of=slot,
        vertex_at=[
            vertices[vid[n]] if n in vid and roles[i] in ("vertex", "identity") else None
            for i, n in enumerate(nodes)
        ],
        plain_inputs=_plain_inputs(gm),
        out_spec=getattr(gm, "_out_spec", None) is not None,
    )


def _plain_inputs(gm: fx.GraphModule) -> bool:
    """Whether :func:`~pccompile.frontend.annotate.complete_inputs` returns a correct count of
    inputs unchanged: no input spec (torch.export), no ``*args``/``**kwargs``, no defaults."""
    if getattr(gm, "_in_spec", None) is not None:
        return False
    return all(
        not n.args and not n.target.startswith("*") for n in gm.graph.nodes if n.op == "placeholder"
    )


def _scheduled(node: fx.Node) -> bool:
    info = node.meta["pc"]
    return info.live and info.role in ("vertex", "identity", "output")


@dataclass
class _Reads:
    """What one vertex reads, resolved (the result of :func:`_resolve_args`)."""

    sources: dict[fx.Node, ArgSource]
    parents: list[int]
    params: list[torch.nn.Parameter]
    param_leaves: list[int]


def _resolve_args(gm: fx.GraphModule, node: fx.Node, slot: dict, vid: dict) -> _Reads:
    """Resolve every argument of ``node`` (through data movement) to an :class:`ArgSource`."""
    reads = _Reads({}, [], [], [])
    stack = list(node.all_input_nodes)
    while stack:
        a = stack.pop()
        if a in reads.sources:
            continue
        role = a.meta["pc"].role
        if role == "struct":  # data movement: resolved per reader
            reads.sources[a] = MOVED
            stack.extend(a.all_input_nodes)
        elif role in ("vertex", "identity"):
            if a not in vid:  # a live vertex never reads a dead one; guard anyway
                raise UnsupportedOpError(f"Node {node.name!r} reads dead vertex {a.name!r}.")
            reads.sources[a] = ArgSource("value", vid[a])
            if vid[a] not in reads.parents:
                reads.parents.append(vid[a])
        else:
            reads.sources[a] = ArgSource("env", slot[a])
            if role == "param":
                reads.params = list(_unique(reads.params + [fetch(gm, a.target)]))
            elif role == "param_op":
                reads.param_leaves.append(slot[a])
    if node.op == "output" and (reads.params or reads.param_leaves):
        raise UnsupportedOpError(
            "The model returns a parameter (or a function of parameters only) directly; "
            "pccompile needs every output to be computed from the inputs."
        )
    return reads


def _with_module_params(params: list, module: torch.nn.Module | None) -> tuple:
    own = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    return _unique(params + own)


def _unique(params) -> tuple[torch.nn.Parameter, ...]:
    """Parameters in first-seen order, each once (by identity: tensors do not hash by value)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return tuple(seen.values())


def _by_level(vertices: list[Vertex]) -> list[list[int]]:
    """Vertex ids per level. Within a level, latest consumer first: a vertex with several children
    then sums their feedback in the order autograd's engine does (reverse execution order), so
    float32 results are not just equal up to rounding but bitwise equal to BP's. (An identity
    vertex sits just before the vertex it feeds, so it ranks with its reader.)"""
    by_level: list[list[int]] = [[] for _ in range(1 + max(v.level for v in vertices))]
    for v in sorted(vertices, key=lambda v: v.slot, reverse=True):
        by_level[v.level].append(v.vid)
    return by_level


def _set_feeds(vertices: list[Vertex]) -> None:
    """A vertex "needs feedback" if a parameter sits at or above it; feedback to the others
    (e.g. a slice of a clamped input) changes nothing the efficient schedules return."""
    needs = [False] * len(vertices)
    for v in sorted(vertices, key=lambda v: -v.level):  # parents before children
        needs[v.vid] = bool(v.params or v.param_leaves) or any(needs[r] for r in v.parents)
    for v in vertices:
        v.feeds = tuple(needs[r] for r in v.parents)
        v.fed = tuple(r for r in v.parents if needs[r])


def fetch(gm: fx.GraphModule, target: str) -> Any:
    """The attribute ``target`` (a dotted path) of ``gm``."""
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
            out.append(fetch(gm, n.target))
        elif n.op == "call_module":
            out.extend(p for p in gm.get_submodule(n.target).parameters() if p.requires_grad)
        stack.extend(n.all_input_nodes)
    return out


def _make_loader(node: fx.Node, sources: dict[fx.Node, ArgSource]) -> Callable:
    """A function ``(env, values) -> (args, kwargs)`` for ``node``: each argument is the value
    node of its parent vertex, a slot of the environment, or (data movement) the same movement
    applied to the reader's own view of the values."""
    args, kwargs = node.args, node.kwargs
    fast = _direct_loader(args, kwargs, sources)
    if fast is not None:
        return fast
    frame: list = [None, None]  # (env, values) of the current call

    def get(n: fx.Node) -> Any:
        kind, index = sources[n]
        if kind == "value":
            return frame[1][index]
        if kind == "env":
            return frame[0][index]
        if n.op == "call_module":  # nn.Identity: its input, unchanged
            return get(n.args[0])
        return n.target(*map_arg(n.args, get), **map_arg(n.kwargs, get))

    def load(env: list, values: list) -> tuple[tuple, dict]:
        frame[0], frame[1] = env, values
        try:
            return map_arg(args, get), map_arg(kwargs, get)
        finally:
            frame[0] = frame[1] = None

    return load


_CONSTANTS = (int, float, bool, str, type(None), torch.dtype, torch.device)


def _direct_loader(args: tuple, kwargs: dict, sources: dict[fx.Node, ArgSource]) -> Callable | None:
    """The loader of :func:`_make_loader` for the common case, without ``map_arg``: positional
    arguments only, each a value node, an env slot or a plain constant. None otherwise."""
    if kwargs:
        return None
    spec = []
    for a in args:
        if isinstance(a, fx.Node):
            src = sources[a]
            if src.kind == "moved":
                return None
            spec.append((src.kind == "value", src.index))
        elif type(a) in _CONSTANTS:
            spec.append((None, a))
        else:
            return None
    if len(spec) == 1 and spec[0][0] is not None:
        is_value, i = spec[0]
        if is_value:
            return lambda env, values: ((values[i],), {})
        return lambda env, values: ((env[i],), {})
    spec = tuple(spec)

    def load(env: list, values: list) -> tuple[tuple, dict]:
        return tuple(
            (values[x] if is_value else env[x]) if is_value is not None else x
            for is_value, x in spec
        ), {}

    return load


def _direct_call(
    node: fx.Node, sources: dict[fx.Node, ArgSource], module: torch.nn.Module | None
) -> Callable | None:
    """``(env, values) -> fn(x)`` for a node calling a module or a function on one value node or
    env slot and nothing else (the feed-forward pass's common vertex); None for anything else."""
    if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    src = sources[node.args[0]]
    if src.kind == "moved":
        return None
    i = src.index
    fn = module if node.op == "call_module" else node.target
    if fn is None or node.op not in ("call_module", "call_function"):
        return None
    if src.kind == "value":
        return lambda env, values: fn(values[i])
    return lambda env, values: fn(env[i])
