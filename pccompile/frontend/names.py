"""Vertex names a person can predict: module paths, as in ``state_dict`` keys.

Reads: an annotated GraphModule (roles in ``node.meta["pc"]``, ``nn_module_stack`` recorded by
torch.fx or torch.export). Writes: ``node.meta["pc_name"]`` on every input, vertex and output
node.

The rule, the same for both front ends:

* a module call is named by the module's path: ``layers.0.att.o`` (``1`` in an ``nn.Sequential``),
  the prefix of its parameters in ``state_dict()``;
* any other op by the path of the module that called it and the op: ``layers.0.add``,
  ``layers.0.att.softmax``, ``add`` at the top; torch.export's ATen ops so too
  (``layers.0.att.o.linear``). A second op of the same kind in the same module gets ``_1``,
  ``_2``... (counted per module, so identical blocks get identical names);
* a layer vertex (``granularity="layer"``, :mod:`.layers`) is named after its parametric op, the
  name that op has at ``granularity="op"``;
* an identity vertex (:mod:`.level`) on the edge ``u -> c`` is ``u->c:k``, ``k = 1, 2...`` from
  ``u``; the output vertex is ``output``; inputs keep their argument names (``x``).

Invariants: names are unique in the graph; FX node names are not changed (they must stay Python
identifiers, dots are not allowed there): the engine, the PC graph (:mod:`pccompile.graph`) and
every ``precision=``/``clamp=``/``energies=`` key use these names. :func:`vertex_name` reads them.
"""

from __future__ import annotations

import re

import torch.fx as fx

from ..ops.messages import module_path

__all__ = [
    "name_vertices",
    "vertex_name",
    "identity_name",
    "close_matches",
    "no_vertex_message",
]

_NAMED_ROLES = ("input", "vertex", "output")


def name_vertices(gm: fx.GraphModule) -> None:
    """Set ``node.meta["pc_name"]`` on the inputs, vertices and output (module docstring)."""
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.meta["pc"].role not in _NAMED_ROLES:
            continue
        if node.op == "output":
            base = "output"
        elif node.op == "placeholder" or node.op == "call_module":
            base = str(node.target)
        else:
            scope, op = module_path(node), _op_name(node)
            base = f"{scope}.{op}" if scope else op
        node.meta["pc_name"] = _unique(base, used)


def vertex_name(node: fx.Node) -> str:
    """The name of the vertex (or input) ``node`` is; the FX name where none was given."""
    return node.meta.get("pc_name", node.name)


def identity_name(source: fx.Node, target: fx.Node, k: int) -> str:
    """The ``k``-th identity vertex (from the source) on the edge ``source -> target``."""
    return f"{vertex_name(source)}->{vertex_name(target)}:{k}"


def close_matches(name: str, names: list[str], n: int = 5) -> list[str]:
    """The names a mistyped ``name`` probably meant: difflib's closest, then any sharing its
    last component (``att.o`` for ``layers.0.att.o``)."""
    import difflib

    out = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    tail = name.rsplit(".", 1)[-1]
    out += [m for m in names if m.rsplit(".", 1)[-1] == tail and m not in out]
    return out[:n]


def no_vertex_message(what: str, name: object, names: list[str]) -> str:
    """``precision: no vertex named 'layers.0.att.0'; did you mean 'layers.0.att.o'? ...``: the
    close matches and where the full list is (in Python and on the command line)."""
    text = str(name)
    near = close_matches(text, names)
    hint = (
        f"did you mean {', '.join(repr(m) for m in near)}?"
        if near
        else f"the names look like {', '.join(repr(m) for m in names[:4])}."
    )
    return (
        f"{what}: no vertex named {text!r}; {hint} All {len(names)} names: "
        f"[v.name for v in pcm.plan.vertices], or `pccompile inspect MODEL --format text`."
    )


def _op_name(node: fx.Node) -> str:
    """``add``, ``softmax``, ``linear`` (torch.export's ``aten.linear.default``), ``view``."""
    target = node.target
    name = getattr(target, "_opname", None)  # an ATen OpOverload: its packet's name
    if name is None:
        name = target if isinstance(target, str) else getattr(target, "__name__", None)
    if not name:
        name = re.sub(r"_\d+$", "", node.name)
    return name.strip("_") or node.name


def _unique(base: str, used: set[str]) -> str:
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name
