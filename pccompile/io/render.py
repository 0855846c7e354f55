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
from ..extras import require
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
    "draw_graph",
    "draw_png",
    "figure_format",
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
            ", ".join(r["names"]),
        )
        for r in s["per_level"]
    ]
    header = ["level", "vertices", "op", "identity", "param uses", "names"]
    return "\n".join(head) + "\n" + format_table(header, rows)


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


FIGURE_FORMATS = ("png", "svg", "pdf")
_MPL = ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg")


def figure_format(path: str | os.PathLike, expected: str | None = None) -> str:
    """The picture format a path's suffix names (``png``, ``svg``, ``pdf``), so the bytes written
    always match the name (never PNG bytes in a ``.svg``).

    Raises:
        ConfigError: no or an unknown suffix, or one that disagrees with ``expected``.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        want = expected or "png"
        raise ConfigError(
            f"Cannot tell the picture format of {os.fspath(path)!r}: name it .png, .svg or .pdf "
            f"(e.g. {str(Path(path).with_suffix('.' + want))!r})."
        )
    if expected is not None and suffix != expected:
        raise ConfigError(
            f"{os.fspath(path)!r} ends in .{suffix} but the format asked for is {expected}; name "
            f"the file .{expected}, or ask for --format {suffix}."
        )
    return suffix


def draw_graph(
    g: nx.DiGraph, path: str | os.PathLike, title: str = "", *, overwrite: bool = False
) -> Path:
    """Draw the leveled graph, one row per level: inputs at the top, the output at the bottom,
    each vertex a box labelled with what it computes (``Conv2d``, ``relu``, ``identity``),
    coloured by kind; the format follows the suffix (``.png``, ``.svg``, ``.pdf``).

    The rows are :func:`networkx.multipartite_layout` of the ``level`` attribute; edges join
    adjacent rows (identity vertices pad the longer ones), so a skip connection reads as a chain
    of grey identity boxes beside the block it skips.

    Raises:
        ConfigError: matplotlib is not installed (the message names the extra), or the suffix
            is not a picture format.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    fmt = figure_format(path)
    require("plot", "draw_graph", _MPL)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    by_level = _ordered_rows(g)
    widest = max((len(vs) for vs in by_level.values()), default=1)
    depth = max(by_level, default=0)
    xy = _row_positions(g, by_level)
    width = min(30.0, max(7.0, 2.2 + 1.5 * widest))
    height = min(80.0, 1.2 + 0.34 * (depth + 1))
    fontsize = 7 if widest <= 12 else 5
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.02 + 0.4 / height, 0.88, 1 - (1.3 + 0.4) / height / 1.2))
    ax.add_collection(
        LineCollection(
            [(xy[u], xy[v]) for u, v in g.edges], colors="#9a9a9a", linewidths=0.7, zorder=1
        )
    )
    _draw_boxes(ax, g, xy, fontsize)
    half = 1.6 * (widest - 1) / 2 + 1.0
    ax.set_xlim(-half, half)
    ax.set_ylim(-0.7, depth + 0.7)
    ax.set_ylabel("level (distance to the output)")
    ax.set_yticks(range(0, depth + 1, 5 if depth > 20 else 1))
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.legend(
        handles=[Patch(fc=_LIGHT[k], ec=c, label=k) for k, c in KIND_COLORS.items()],
        loc="upper right",
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    n_id = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "identity")
    fig.suptitle(
        f"{title}\n{g.number_of_nodes()} vertices ({n_id} identity) on levels 0..{depth}; "
        f"data flows top to bottom",
        fontsize=9,
        x=0.02,
        ha="left",
        y=1 - 0.15 / height,
        va="top",
    )
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
    return Path(path)


def _row_positions(g: nx.DiGraph, by_level: dict[int, list]) -> dict:
    """Row ``level`` at y = level (output at 0, inputs on top), a row's vertices 1.6 units
    apart so labels never overlap: :func:`networkx.multipartite_layout`'s x order, rescaled.
    (Rows given as a dict of lists keep their order; a subset_key attribute name would not.)"""
    pos = nx.multipartite_layout(g, subset_key=by_level, align="horizontal", scale=1.0)
    xs = {v: float(p[0]) for v, p in pos.items()}
    step = {
        lvl: (max(xs[v] for v in vs) - min(xs[v] for v in vs)) / max(len(vs) - 1, 1)
        for lvl, vs in by_level.items()
    }
    return {
        v: ((xs[v] / step[lvl] * 1.6) if step[lvl] else 0.0, lvl)
        for lvl, vs in by_level.items()
        for v in vs
    }


def _draw_boxes(ax, g: nx.DiGraph, xy: dict, fontsize: int) -> None:
    """Each vertex a box labelled with what it computes, coloured by kind."""
    for v, (x, y) in xy.items():
        d = g.nodes[v]
        box = {
            "boxstyle": "round,pad=0.25",
            "fc": _LIGHT.get(d["kind"], "white"),
            "ec": KIND_COLORS.get(d["kind"], "black"),
            "lw": 0.8,
        }
        label = d.get("label") or d.get("op", v)
        ax.text(x, y, label, ha="center", va="center", fontsize=fontsize, zorder=2, bbox=box)


def draw_png(
    g: nx.DiGraph, path: str | os.PathLike, title: str = "", *, overwrite: bool = False
) -> Path:
    """:func:`draw_graph` to a ``.png`` path (kept for existing callers)."""
    figure_format(path, "png")
    return draw_graph(g, path, title, overwrite=overwrite)


_LIGHT = dict(zip(VERTEX_KINDS, ("#c6d4ea", "#f6d6bd", "#e3e3e3", "#c9e4cf"), strict=True))


def _ordered_rows(g: nx.DiGraph) -> dict[int, list[str]]:
    """Each level's vertices ordered to keep edges from crossing: top row in topological order,
    every next row by the mean position of each vertex's parents (the barycentre heuristic)."""
    rows = _by_level(g)
    place: dict[str, float] = {}
    for lvl in sorted(rows, reverse=True):
        vs = rows[lvl]
        keys = {}
        for i, v in enumerate(vs):
            ps = [place[p] for p in g.predecessors(v) if p in place]
            keys[v] = (sum(ps) / len(ps) if ps else i / max(len(vs), 1), i)
        rows[lvl] = sorted(vs, key=keys.__getitem__)
        for i, v in enumerate(rows[lvl]):
            place[v] = i / max(len(vs) - 1, 1)
    return rows


def _by_level(g: nx.DiGraph) -> dict[int, list[str]]:
    """The vertices of each level, in topological order."""
    by_level: dict[int, list[str]] = {}
    for v in nx.topological_sort(g):
        by_level.setdefault(g.nodes[v]["level"], []).append(v)
    return by_level
