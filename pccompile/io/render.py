"""Views of a PC graph: summary text and JSON, GraphML, DOT and a PNG drawing.

Reads: a PC graph (``networkx.DiGraph``, see :mod:`pccompile.graph`) and its summary (the dict
of :func:`pccompile.summary.graph_summary`, plus ``model``, ``training`` and ``input_shapes``).
Writes: the requested file only, through :func:`pccompile.io.atomic.atomic_output`.
Invariants: the graph is never modified (GraphML/DOT get a copy whose attributes are plain
scalars: tuples and lists as JSON text, None as ""); networkx is used only here, for these views.
pydot (DOT, the ``dot`` extra) and matplotlib (PNG, the ``plot`` extra) are optional: they are
imported when used, and their absence is a :class:`ConfigError` naming the install.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import networkx as nx

from ..errors import ConfigError
from ..extras import install_hint, require
from ..summary import VERTEX_KINDS
from ..verify import format_table
from .atomic import atomic_output

__all__ = [
    "KIND_COLORS",
    "GraphFormat",
    "plain_graph",
    "render_graph",
    "render_text",
    "headline",
    "write_graph",
    "write_graphml",
    "draw_png",
    "shape_text",
    "mode_text",
]

GraphFormat = Literal["text", "json", "graphml", "dot"]
KIND_COLORS = dict(zip(VERTEX_KINDS, ("#4c72b0", "#dd8452", "#8c8c8c", "#55a868"), strict=True))


def shape_text(shapes: Sequence[Sequence[int]]) -> str:
    """``[(2, 3, 32, 32), (2, 5)]`` -> ``"2x3x32x32, 2x5"``."""
    return ", ".join("x".join(map(str, s)) for s in shapes)


def mode_text(training: bool) -> str:
    return "train mode" if training else "eval mode"


def plain_graph(g: nx.DiGraph, *, dot: bool = False) -> nx.DiGraph:
    """A copy whose attributes are GraphML/DOT-safe scalars (tuples as JSON text, None as "").

    With ``dot=True`` the ``shape`` attribute is renamed ``tensor_shape`` (``shape`` means
    something else to Graphviz) and every node gets a ``label`` and a ``color`` by kind.
    """
    h = nx.DiGraph()
    for v, d in g.nodes(data=True):
        attrs: dict[str, Any] = {}
        for k, val in d.items():
            if val is None:
                val = ""
            elif isinstance(val, (tuple, list)):
                val = json.dumps(val)
            elif not isinstance(val, (str, int, float, bool)):
                val = str(val)
            attrs["tensor_shape" if dot and k == "shape" else k] = val
        if dot:  # "shape" is a Graphviz attribute; add a label and a colour instead
            attrs["label"] = f"{v}\\n{d.get('op', '')}"
            attrs["color"] = KIND_COLORS.get(d.get("kind"), "black")
        h.add_node(v, **attrs)
    h.add_edges_from(g.edges)
    return h


def render_graph(fmt: GraphFormat, g: nx.DiGraph, summary: dict[str, Any]) -> str:
    """The graph as ``text`` (the summary and a table per level), ``json`` (the summary and the
    graph in networkx node-link form), ``graphml`` or ``dot``.

    Raises:
        ConfigError: ``dot`` without pydot installed.
    """
    if fmt == "json":
        data = nx.node_link_data(g, edges="edges")
        return json.dumps({**summary, "graph": data}, default=str, indent=1)
    if fmt == "graphml":
        return "\n".join(nx.generate_graphml(plain_graph(g)))
    if fmt == "dot":
        require("dot", "DOT output (or use GraphML)")
        return nx.nx_pydot.to_pydot(plain_graph(g, dot=True)).to_string()
    return render_text(summary)


def render_text(s: dict[str, Any]) -> str:
    """The summary as a few lines and a table with one row per level (``pccompile inspect``)."""
    k = s["kinds"]
    shapes = shape_text(s["input_shapes"])
    head = [
        f"PC graph of {s['model']} ({mode_text(s['training'])}, input {shapes})",
        f"  vertices         {s['vertices']} ({k['input']} input, {k['op']} op, "
        f"{k['identity']} identity, {k['output']} output), {s['edges']} edges",
        f"  levels           0..{s['depth']} (depth {s['depth']}, "
        f"{'leveled' if s['leveled'] else 'NOT leveled'}); inputs above level {s['depth']}",
        f"  inference steps  zil {s['steps']['zil']} (depth+1), fpa {s['steps']['fpa']} (depth)",
        f"  parameters       {s['parameters']} tensors, {s['param_uses']} uses",
        "",
    ]
    rows = [
        (
            r["level"],
            r["vertices"],
            r["op"],
            r["identity"],
            r["param_uses"],
            "input" if r["input"] else ("output" if r["output"] else ""),
        )
        for r in s["per_level"]
    ]
    return (
        "\n".join(head)
        + "\n"
        + format_table(["level", "vertices", "op", "identity", "param uses", "note"], rows)
    )


def headline(s: dict[str, Any]) -> str:
    """The summary on one line."""
    k = s["kinds"]
    return (
        f"{s['model']}: {s['vertices']} vertices ({k['input']} input, {k['op']} op, "
        f"{k['identity']} identity, {k['output']} output), depth {s['depth']}, inference "
        f"steps zil {s['steps']['zil']} / fpa {s['steps']['fpa']}"
    )


def write_graphml(g: nx.DiGraph, path: str | os.PathLike) -> None:
    """``nx.write_graphml`` of :func:`plain_graph` (not atomic: for a path being assembled)."""
    nx.write_graphml(plain_graph(g), path)


def write_graph(
    fmt: GraphFormat, g: nx.DiGraph, text: str, path: str | os.PathLike, *, overwrite: bool = False
) -> None:
    """Write ``text`` (what :func:`render_graph` returned), or GraphML for ``graphml``, to
    ``path`` atomically.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        if fmt == "graphml":
            write_graphml(g, tmp)
        else:
            tmp.write_text(text if text.endswith("\n") else text + "\n")


def draw_png(
    g: nx.DiGraph, path: str | os.PathLike, title: str = "", *, overwrite: bool = False
) -> Path:
    """Draw the leveled graph to a PNG: x = level (inputs left, output right), colour by kind.

    Raises:
        ConfigError: matplotlib is not installed (the message names the install).
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as exc:
        require("plot", "draw_png")  # raises, naming the extra
        raise ConfigError(f"draw_png needs matplotlib: {install_hint('plot')}.") from exc

    by_level = _by_level(g)
    pos = {
        v: (lvl, i - (len(vs) - 1) / 2) for lvl, vs in by_level.items() for i, v in enumerate(vs)
    }
    width = max(6.0, min(40.0, 0.35 * len(by_level)))
    height = max(3.0, min(20.0, 0.6 * max((len(vs) for vs in by_level.values()), default=1)))
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.add_collection(
        LineCollection(
            [(pos[u], pos[v]) for u, v in g.edges], colors="#bbbbbb", linewidths=0.6, zorder=1
        )
    )
    for kind, color in KIND_COLORS.items():
        vs = [v for v in g if g.nodes[v]["kind"] == kind]
        if vs:
            ax.scatter([pos[v][0] for v in vs], [pos[v][1] for v in vs], s=18, c=color, zorder=2)
    if g.number_of_nodes() <= 60:
        for v, (x, y) in pos.items():
            ax.annotate(v, (x, y), fontsize=5, xytext=(2, 3), textcoords="offset points")
    ax.invert_xaxis()  # level = distance to the output: data flows left to right
    ax.set_xlabel("level (distance to the output)")
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in KIND_COLORS.items()
        ],
        loc="best",
        fontsize=7,
    )
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def _by_level(g: nx.DiGraph) -> dict[int, list[str]]:
    """The vertices of each level, in topological order."""
    by_level: dict[int, list[str]] = {}
    for v in nx.topological_sort(g):
        by_level.setdefault(g.nodes[v]["level"], []).append(v)
    return by_level
