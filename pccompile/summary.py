"""Counts of a converted model's PC graph: vertices by kind, depth, inference steps, per level.

Reads: a :class:`PCModule`'s PC graph and plan for its current training mode.
Writes nothing. ``pccompile inspect`` prints this summary, ``pccompile convert`` and
:func:`pccompile.io.artifact.save_converted` record part of it in the manifest.
Invariants: ``kinds`` has every kind of :data:`VERTEX_KINDS` (0 when absent), in that order;
``per_level`` runs from the deepest level down to the output (level 0); plain JSON types only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .module import PCModule
from .rules import FPA, RULES, ZIL

__all__ = ["VERTEX_KINDS", "graph_summary"]

VERTEX_KINDS = ("input", "op", "identity", "output")


def graph_summary(pcm: PCModule) -> dict[str, Any]:
    """Counts of the PC graph: vertices by kind, depth, inference steps per rule, per level.

    Returns:
        A dict with ``vertices``, ``edges``, ``kinds`` (count per kind), ``identity_vertices``,
        ``depth``, ``leveled``, ``steps`` (``{"zil": depth + 1, "fpa": depth}`` on a leveled
        graph), ``parameters`` (distinct parameter tensors), ``param_uses`` and ``per_level``
        (one dict per level: ``level``, ``vertices``, ``op``, ``identity``, ``input``,
        ``output``, ``param_uses``, ``names``: the vertex names, the keys of ``precision=``,
        ``clamp=``, ``energies=``; see :mod:`pccompile.frontend.names`).

    Example:
        >>> s = graph_summary(pccompile.convert(net, x))
        >>> s["steps"]["zil"] == s["depth"] + 1
        True
    """
    g, plan = pcm.graph, pcm.plan
    kinds = Counter(d["kind"] for _, d in g.nodes(data=True))
    per: dict[int, Counter] = {}
    names: dict[int, list[str]] = {}
    for name, d in g.nodes(data=True):
        names.setdefault(d["level"], []).append(name)
        c = per.setdefault(d["level"], Counter())
        c["vertices"] += 1
        c[d["kind"]] += 1
        c["param_uses"] += len(d.get("params", ()))
    params = {p for _, d in g.nodes(data=True) for p in d.get("params", ())}
    return {
        "vertices": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "kinds": {k: kinds.get(k, 0) for k in VERTEX_KINDS},
        "identity_vertices": kinds.get("identity", 0),
        "depth": plan.depth,
        "leveled": plan.leveled,
        "steps": {
            "zil": RULES["zil"].steps(plan, ZIL()),
            "fpa": RULES["fpa"].steps(plan, FPA()),
        },
        "parameters": len(params),
        "param_uses": sum(c["param_uses"] for c in per.values()),
        "per_level": [
            {
                "level": lvl,
                "vertices": c["vertices"],
                "op": c["op"],
                "identity": c["identity"],
                "input": c["input"],
                "output": c["output"],
                "param_uses": c["param_uses"],
                "names": names[lvl],
            }
            for lvl, c in sorted(per.items(), reverse=True)
        ],
    }
