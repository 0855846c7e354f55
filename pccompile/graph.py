"""The PC graph: vertices, edges, levels, and the levelling pass.

Reads: an annotated GraphModule (``node.meta["pc"]``).
Writes: a ``networkx.DiGraph`` whose nodes are PC vertices keyed by name, with attributes
``kind`` (``input`` | ``op`` | ``identity`` | ``output``), ``level`` (longest path to the output,
output = 0), ``shape``, ``params`` (qualified names of the parameters the vertex uses) and
``fx`` (the FX node name, or None for identity vertices). Edges run parent → child.
Invariant after :func:`level_graph`: every vertex that is not an input has all its children one
level below it. Inputs are clamped to the data and never change, so edges out of inputs are never
padded.
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

__all__ = ["data_parents", "build_pc_graph", "level_graph", "is_leveled", "depth"]


def data_parents(node: fx.Node) -> tuple[fx.Node, ...]:
    """The vertices/inputs whose values ``node`` carries (itself, unless it is a struct)."""
    info = node.meta["pc"]
    return info.sources if info.role == "struct" else (node,)


def build_pc_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """The PC graph of an annotated GraphModule (levels set, not yet leveled).

    Vertices that cannot reach the output (dead code, an unused auxiliary head) are left out:
    their error is always zero. They still run in the feed-forward pass, so their side effects
    (BatchNorm statistics, random draws) match BP's forward.
    """
    g = nx.DiGraph()
    params_of = _param_names(gm)
    for node in gm.graph.nodes:
        info = node.meta["pc"]
        if info.role not in ("input", "vertex", "output"):
            continue
        kind = {"input": "input", "vertex": "op", "output": "output"}[info.role]
        g.add_node(
            node.name,
            kind=kind,
            fx=node.name,
            shape=info.shapes[0] if len(info.shapes) == 1 else tuple(info.shapes),
            params=params_of.get(node, ()),
            op=_op_label(node),
        )
        if kind == "input":
            continue
        for a in node.all_input_nodes:
            if a.meta["pc"].role in ("vertex", "struct", "input"):
                for p in data_parents(a):
                    g.add_edge(p.name, node.name)
    live = nx.ancestors(g, "output") | {"output"}
    g.remove_nodes_from([v for v in list(g.nodes) if v not in live])
    _set_levels(g)
    return g


def _set_levels(g: nx.DiGraph) -> None:
    for v in reversed(list(nx.topological_sort(g))):
        children = list(g.successors(v))
        g.nodes[v]["level"] = 0 if not children else 1 + max(g.nodes[c]["level"] for c in children)


def depth(g: nx.DiGraph) -> int:
    """The largest level of a vertex that is not an input."""
    return max((d["level"] for _, d in g.nodes(data=True) if d["kind"] != "input"), default=0)


def is_leveled(g: nx.DiGraph) -> bool:
    return all(
        g.nodes[u]["level"] - g.nodes[c]["level"] == 1
        for u, c in g.edges
        if g.nodes[u]["kind"] != "input"
    )


def level_graph(g: nx.DiGraph) -> nx.DiGraph:
    """Return a copy of ``g`` in which every edge ``u -> c`` that skips levels is padded.

    An edge with ``level(u) - level(c) = k > 1`` becomes ``u -> id_1 -> ... -> id_{k-1} -> c``:
    identity vertices (a value node and an error node, no parameters) at the levels in between.
    Without them a skip edge would deliver part of ``u``'s error before the front of errors from
    the output reaches ``u``'s level, and Z-IL would stop being exact.
    """
    out = g.copy()
    for u, c in list(g.edges):
        lu, lc = g.nodes[u]["level"], g.nodes[c]["level"]
        if g.nodes[u]["kind"] == "input" or lu - lc <= 1:
            continue
        out.remove_edge(u, c)
        prev = u
        for lvl in range(lu - 1, lc, -1):
            name = f"{u}__id{lvl}__{c}"
            out.add_node(
                name,
                kind="identity",
                fx=None,
                level=lvl,
                shape=g.nodes[u]["shape"],
                params=(),
                op="identity",
                source=u,
                target=c,
            )
            out.add_edge(prev, name)
            prev = name
        out.add_edge(prev, c)
    assert is_leveled(out), "levelling left an edge that skips levels"
    return out


def _op_label(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module:{node.target}"
    if node.op == "call_method":
        return f"method:{node.target}"
    if node.op == "call_function":
        return f"function:{getattr(node.target, '__name__', str(node.target))}"
    return node.op


def _param_names(gm: fx.GraphModule) -> dict[fx.Node, tuple[str, ...]]:
    """For each vertex: the qualified names of trainable parameters it uses (directly, through
    its leaf module, or through parameter transforms feeding it)."""
    owner = {id(p): name for name, p in gm.named_parameters(remove_duplicate=False)}
    via: dict[fx.Node, set[str]] = {}
    out: dict[fx.Node, tuple[str, ...]] = {}
    for node in gm.graph.nodes:
        info = node.meta["pc"]
        names: set[str] = set()
        if info.role == "param":
            names.add(node.target)
        for a in node.all_input_nodes:
            if a.meta["pc"].role in ("param", "param_op"):
                names |= via.get(a, set())
        if node.op == "call_module" and info.role in ("vertex", "param_op"):
            mod = gm.get_submodule(node.target)
            names |= {
                owner.get(id(p), f"{node.target}.{n}")
                for n, p in mod.named_parameters()
                if p.requires_grad
            }
        via[node] = names
        if info.role == "vertex":
            out[node] = tuple(sorted(names))
    return out
