"""The muPC parametrization as a graph pass: every parametric edge scaled for depth.

Reads: an annotated GraphModule (roles in ``node.meta["pc"]``), after the trace was checked
against the module. Writes: a ``mul`` node after every scaled parametric op (its output times a
constant ``a``), ``gm.meta["pc_mupc"]`` (node name -> ``(a, kind, fan_in)``) and
``gm.meta["pc_mupc_params"]`` (the scaled ops' weights and biases). The caller re-annotates the
graph. :func:`mupc_init` (called once by ``convert``, not per plan) re-draws those weights
``N(0, 1)`` and zeroes the biases, in place: the user's module is changed, as muPC asks.

The rules (muPC, Innocenti et al. 2025, arXiv 2505.13124, eq. for ``a_l``; with FabricPC 0.4.0's
corrections for DAGs), per parametric op ``W`` (a Linear, a convolution, a function reading a
weight of two or more dimensions) with ``fan_in`` its weight's inputs per output
(``in_features``, ``in_channels * kernel size``):

* **readout** (its output reaches the model's output without another parametric op or merge):
  ``a = 1 / fan_in``;
* **residual branch** (its output reaches a *merge*, an ``add`` of two data values, as the branch
  operand, not the skip one): ``a = 1 / sqrt(fan_in * L)``, ``L`` the number of merges on the
  longest path through the graph (FabricPC: the depth damping applies only to branch edges
  entering merges);
* **any other** (the input layer, a hidden layer without a skip): ``a = 1 / sqrt(fan_in)``.

Invariants: the graph computes exactly ``a * W(...)`` where it computed ``W(...)``; nothing else
changes. Not handled (left unscaled, the pass says so in the table): embeddings and
one-dimensional weights (norms), and pooling's variance (FabricPC divides average pooling by its
window; here pools are parameter-free ops and pass through).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError

__all__ = ["PARAMETRIZATIONS", "mupc_scale", "mupc_init", "check_parametrization"]

PARAMETRIZATIONS = (None, "mupc")
_ADDS = (operator.add, operator.iadd, torch.add)


def check_parametrization(p) -> None:
    if p not in PARAMETRIZATIONS:
        raise ConfigError(
            f"parametrization must be None or 'mupc', got {p!r} ('mupc' scales every "
            f"parametric edge for depth, Innocenti et al. 2025)."
        )


def _weight(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The weight (and bias) of a parametric op, or None."""
    if node.meta["pc"].role != "vertex":
        return None
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Embedding):
            return None
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2:
            return w, getattr(mod, "bias", None)
        return None
    if node.op == "call_function":
        params = [
            gm.get_parameter(a.target)
            for a in node.all_input_nodes
            if a.op == "get_attr" and a.meta["pc"].role == "param"
        ]
        if params and params[0].dim() >= 2 and node.target is not torch.nn.functional.embedding:
            return params[0], params[1] if len(params) > 1 and params[1].dim() == 1 else None
    return None


def _is_merge(n: fx.Node) -> bool:
    if n.op == "call_function" and n.target in _ADDS or n.op == "call_method" and n.target == "add":
        data = [a for a in n.args[:2] if isinstance(a, fx.Node) and a.meta["pc"].role == "vertex"]
        return len(data) == 2
    return False


def _ancestors(n: fx.Node, memo: dict) -> set:
    if n not in memo:
        out: set = set()
        for a in n.all_input_nodes:
            out.add(a)
            out |= _ancestors(a, memo)
        memo[n] = out
    return memo[n]


def _merges_on_longest_path(graph: fx.Graph) -> int:
    best: dict[fx.Node, int] = {}
    for n in graph.nodes:
        prev = max((best[a] for a in n.all_input_nodes), default=0)
        best[n] = prev + (1 if _is_merge(n) else 0)
    return max(best.values(), default=0)


def _classify(node: fx.Node, weights: set, memo: dict) -> str:
    """Where ``node``'s output goes before the next parametric op: ``readout``, ``branch`` or
    ``hidden``."""
    seen, stack, kind = set(), [(node, user) for user in node.users], "hidden"
    while stack:
        src, n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "output":
            kind = "readout" if kind == "hidden" else kind
            continue
        if _is_merge(n):
            others = [a for a in n.args[:2] if isinstance(a, fx.Node) and a is not src]
            if all(src not in _ancestors(o, memo) for o in others):
                return "branch"  # the operand no other operand is computed from
            continue  # the skip operand: the stream goes on, but as the other edge's skip
        if n in weights:
            continue
        stack.extend((n, u) for u in n.users)
    return kind


def mupc_scale(gm: fx.GraphModule) -> dict[str, tuple[float, str, int]]:
    """Insert the muPC scales (see the module docstring); returns the table it also stores in
    ``gm.meta["pc_mupc"]``."""
    graph = gm.graph
    weights = {n: w for n in graph.nodes if n.op != "placeholder" and (w := _weight(gm, n))}
    if not weights:
        raise ConfigError("parametrization='mupc': the model has no parametric op to scale.")
    depth = max(_merges_on_longest_path(graph), 1)
    memo: dict = {}
    table: dict[str, tuple[float, str, int]] = {}
    kinds = {node: _classify(node, set(weights), memo) for node in weights}  # before editing
    for node, (w, _) in weights.items():
        fan_in, kind = w[0].numel(), kinds[node]
        a = {
            "readout": 1.0 / fan_in,
            "branch": 1.0 / math.sqrt(fan_in * depth),
            "hidden": 1.0 / math.sqrt(fan_in),
        }[kind]
        table[node.name] = (a, kind, fan_in)
        with graph.inserting_after(node):
            scaled = graph.call_function(operator.mul, (node, a))
        node.replace_all_uses_with(scaled, delete_user_cb=lambda u, s=scaled: u is not s)
    graph.lint()
    gm.recompile()
    gm.meta["pc_mupc"] = table
    gm.meta["pc_mupc_params"] = list(weights.values())
    return table


def mupc_init(gm: fx.GraphModule) -> None:
    """muPC's initialisation of the scaled ops (once, at conversion; torch's global RNG):
    weights ``N(0, 1)``, biases zero."""
    with torch.no_grad():
        for w, b in gm.meta.get("pc_mupc_params", []):
            w.normal_(0.0, 1.0)
            if b is not None:
                b.zero_()
