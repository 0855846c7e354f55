"""Levels and levelling: the PC graph's schedule, written into the FX graph itself.

Reads: an annotated GraphModule (``node.meta["pc"]``, see :mod:`pccompile.frontend.annotate`).
Writes: on every node's :class:`~pccompile.frontend.annotate.NodeInfo`, ``level`` (longest path
to the output over the PC graph's edges, output = 0) and ``live`` (the vertex reaches the
output); :func:`level_graph` then inserts *identity vertices* as FX nodes, ``pc_identity(u)``
with role ``identity``, on every edge ``u -> c`` that skips levels, and rewires ``c`` (and the
data movement between them) to read the last identity. ``gm.meta["pc_depth"]`` and
``gm.meta["pc_leveled"]`` record the result.

The PC graph's edges are the FX graph's data edges seen through data movement: a vertex ``c``
has an edge from every vertex or input whose value it reads, directly or through ``struct``
nodes (tuple packing, ``getitem``). Vertices that cannot reach the output (dead code, an unused
auxiliary head) are not live: their error is always zero, and they run only in the feed-forward
pass, where their side effects (BatchNorm statistics, random draws) match BP's forward.

Invariant after :func:`level_graph`: every live vertex that is not an input has all its children
exactly one level below it. Inputs are clamped to the data and never change, so edges out of
inputs are never padded. The padded graph computes exactly what it computed before: an identity
vertex returns its argument.
"""

from __future__ import annotations

import copy

import torch.fx as fx
from torch.fx.node import map_arg

from .names import identity_name

__all__ = ["pc_identity", "set_levels", "level_graph", "data_parents", "pc_parents"]

_DATA_ROLES = ("vertex", "identity", "struct", "input")
_SCHEDULED = ("vertex", "identity", "output")


def pc_identity(x):
    """An identity vertex: a value node and an error node that copy ``x`` one level down."""
    return x


def data_parents(node: fx.Node) -> tuple[fx.Node, ...]:
    """The vertices/inputs whose values ``node`` carries (itself, unless it is a struct)."""
    info = node.meta["pc"]
    return info.sources if info.role == "struct" else (node,)


def pc_parents(node: fx.Node) -> list[fx.Node]:
    """The PC graph's parents of a vertex or the output: the vertices and inputs it reads."""
    out: dict[fx.Node, None] = {}
    for a in node.all_input_nodes:
        if a.meta["pc"].role in _DATA_ROLES:
            for p in data_parents(a):
                out[p] = None
    return list(out)


def set_levels(gm: fx.GraphModule) -> None:
    """Write ``level`` and ``live`` on every node (FX order is topological, so one reverse
    sweep sets each vertex's level from its already-levelled children)."""
    nodes = list(gm.graph.nodes)
    children: dict[fx.Node, list[fx.Node]] = {n: [] for n in nodes}
    for n in nodes:
        if n.meta["pc"].role in _SCHEDULED:
            for p in pc_parents(n):
                children[p].append(n)
    for n in reversed(nodes):
        info = info_of(n)
        info.level, info.live = -1, False
        if info.role == "output":
            info.level, info.live = 0, True
        elif info.role in ("vertex", "identity", "input"):
            live = [c for c in children[n] if info_of(c).live]
            if live:
                info.level, info.live = 1 + max(info_of(c).level for c in live), True
    gm.meta["pc_depth"] = max(
        (info_of(n).level for n in nodes if info_of(n).live and info_of(n).role != "input"),
        default=0,
    )
    gm.meta["pc_leveled"] = all(
        info_of(p).level - info_of(c).level == 1
        for c in nodes
        if info_of(c).live and info_of(c).role in _SCHEDULED
        for p in pc_parents(c)
        if info_of(p).role != "input"
    )


def level_graph(gm: fx.GraphModule) -> None:
    """Pad every edge ``u -> c`` with ``level(u) - level(c) = k > 1`` into
    ``u -> id_1 -> ... -> id_{k-1} -> c``: identity vertices at the levels in between.

    Without them a skip edge would deliver part of ``u``'s error before the front of errors from
    the output reaches ``u``'s level, and Z-IL would stop being exact. The identities of an edge
    are inserted just before ``c``, so within a level they keep the order of their readers.
    """
    set_levels(gm)
    graph = gm.graph
    for c in list(graph.nodes):
        info = info_of(c)
        if not (info.live and info.role in _SCHEDULED):
            continue
        last: dict[fx.Node, fx.Node] = {}
        for u in pc_parents(c):
            lu = info_of(u).level
            if info_of(u).role == "input" or lu - info.level <= 1:
                continue
            prev = u
            with graph.inserting_before(c):
                for lvl in range(lu - 1, info.level, -1):
                    prev = graph.call_function(pc_identity, (prev,))
                    prev.meta["pc"] = _identity_info(u, c, lvl)
                    prev.meta["pc_name"] = identity_name(u, c, lu - lvl)
            last[u] = prev
        if last:
            _rewire(graph, c, last)
    set_levels(gm)
    assert gm.meta["pc_leveled"], "levelling left an edge that skips levels"
    graph.lint()
    gm.recompile()


def _identity_info(u: fx.Node, c: fx.Node, level: int):
    info = copy.copy(info_of(u))
    info.role, info.rule, info.sources = "identity", None, ()
    info.level, info.live, info.pads = level, True, (u, c)
    return info


def _rewire(graph: fx.Graph, c: fx.Node, last: dict[fx.Node, fx.Node]) -> None:
    """Make ``c`` read ``last[u]`` wherever it read ``u``, directly or through data movement
    (struct nodes on the way are copied for ``c``: other readers keep the originals)."""
    copies: dict[fx.Node, fx.Node] = {}

    def through(n: fx.Node) -> fx.Node:
        if n in last:
            return last[n]
        info = info_of(n)
        if info.role != "struct" or not any(s in last for s in info.sources):
            return n
        if n not in copies:
            with graph.inserting_before(c):
                moved = graph.node_copy(n, through)
            moved.meta["pc"] = copy.copy(info)
            moved.meta["pc"].sources = tuple(last.get(s, s) for s in info.sources)
            copies[n] = moved
        return copies[n]

    c.args = map_arg(c.args, through)
    c.kwargs = map_arg(c.kwargs, through)


def info_of(node: fx.Node):
    return node.meta["pc"]
