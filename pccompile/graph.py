"""The PC graph as a networkx view, for inspection, GraphML/DOT and pictures.

Reads: an annotated, levelled GraphModule (``node.meta["pc"]``, levels from
:mod:`pccompile.frontend.level`). Writes: nothing on the module; returns a new ``nx.DiGraph``.

The FX graph is the one intermediate representation: levelling inserts identity vertices into it
as nodes, and the engine compiles its schedule from it. This view copies what a reader wants to
see. Its nodes are the live PC vertices keyed by vertex name (module paths such as
``layers.0.att.o``, the keys of ``precision=``/``clamp=``; :mod:`pccompile.frontend.names`), with
attributes ``kind`` (``input`` | ``op`` | ``identity`` | ``output``), ``level`` (longest path to
the output, output = 0), ``shape``, ``params`` (qualified names of the trainable parameters the
vertex uses), ``op`` (what it calls: ``module:layer1.0.conv1``, ``function:relu``,
``method:view``), ``label`` (what a person reads in a picture: the module's class ``Conv2d``, the
function or method name ``relu``, ``identity``, ``input``, ``output``) and ``fx`` (the FX node
name); identity vertices also carry ``source`` and ``target``, the edge they pad. Edges run
parent -> child.
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

from .frontend.level import pc_parents
from .frontend.names import vertex_name

__all__ = ["pc_graph"]

_KIND = {"input": "input", "vertex": "op", "identity": "identity", "output": "output"}


def pc_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """The live PC vertices of ``gm`` and their edges, as a ``networkx.DiGraph``."""
    g = nx.DiGraph()
    params_of = param_names(gm)
    for node in gm.graph.nodes:
        info = node.meta["pc"]
        if info.role not in _KIND or not info.live:
            continue
        attrs = {
            "kind": _KIND[info.role],
            "fx": node.name,
            "level": info.level,
            "shape": info.shapes[0] if len(info.shapes) == 1 else tuple(info.shapes),
            "params": params_of.get(node, ()),
            "op": _op_label(node),
            "label": _readable(gm, node, info.role),
        }
        if info.role == "identity":
            attrs.update(
                op="identity", source=vertex_name(info.pads[0]), target=vertex_name(info.pads[1])
            )
        g.add_node(vertex_name(node), **attrs)
        if info.role != "input":
            for p in pc_parents(node):
                g.add_edge(vertex_name(p), vertex_name(node))
    return g


def _op_label(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module:{node.target}"
    if node.op == "call_method":
        return f"method:{node.target}"
    if node.op == "call_function":
        return f"function:{getattr(node.target, '__name__', str(node.target))}"
    return node.op


def _readable(gm: fx.GraphModule, node: fx.Node, role: str) -> str:
    if role in ("identity", "input", "output"):
        return role
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        return name.strip("_") or str(node.target)
    return node.op


def param_names(gm: fx.GraphModule) -> dict[fx.Node, tuple[str, ...]]:
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
