"""Vertex granularity: group ops into one vertex per *layer*, as PC research code draws a network.

Reads: an annotated GraphModule (roles and rules in ``node.meta["pc"]``), before levelling.
Writes: the same GraphModule with every layer's nodes replaced by one ``call_module`` node of a
fused sub-GraphModule (built by ``torch.fx.passes.utils.fuser_utils``), annotated as one vertex;
``gm.meta["pc_granularity"]``.

A *layer* is a parametric op (a Linear, a convolution, an RNN cell, a function reading a
parameter) together with the chain of parameter-free ops after it (activation, pooling, dropout,
flatten, a normalisation layer), up to the next parametric op, the next *join* (an op reading
several vertices) or the next *fork* (a value read by several ops); its value node sits at the
end of the chain. Parameter-free ops that read only the clamped inputs (a ``flatten`` of the
image) join the layer they feed. A join with the ops after it is a layer of its own (a residual
``add`` then ``relu``).

Invariants: the grouped graph computes what it computed before (the fused submodules hold the
original modules and parameters, shared, not copied); stateful and random ops keep their rule
inside the group (the group replays the RNG and protects buffers when any member does); no
group spans a buffer update (``effect``) or data movement (``struct``) node.

Why two granularities: Z-IL and FPA are exact at either (a group is a vertex whose function is
the chain); the approximate rules (IL, iPC) need an error to travel one vertex per inference
step, so per-op vertices halve how far it gets in ``T`` steps and leave an extra free value node
after every activation.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.utils.fuser_utils import erase_nodes, fuse_as_graphmodule, insert_subgm

from ..errors import ConfigError
from ..ops import OpRule
from .names import vertex_name

__all__ = ["Granularity", "GRANULARITIES", "group_layers", "check_granularity"]

Granularity = Literal["op", "layer"]
GRANULARITIES = ("op", "layer")

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    getattr(nn, "RMSNorm", nn.LayerNorm),
)
_NORM_NAMES = re.compile(r"(batch|layer|group|instance|rms)_?norm", re.I)


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"granularity must be one of {GRANULARITIES}, got {granularity!r}: 'op' gives every "
            f"op its own value node, 'layer' one per parametric op and the ops after it."
        )


def group_layers(gm: fx.GraphModule) -> list[list[str]]:
    """Fuse every layer of ``gm`` (see the module docstring) into one vertex. Returns the groups
    as lists of the original node names (groups of one node are left as they are)."""
    groups = [g for g in _partition(gm) if len(g) > 1]
    used: set[str] = set(dict(gm.named_modules()))
    out = []
    for nodes in groups:
        out.append([n.name for n in nodes])
        _fuse(gm, nodes, _module_name(gm, nodes, used), vertex_name(_head(gm, nodes)))
    gm.graph.lint()
    gm.recompile()
    gm.meta["pc_granularity"] = "layer"
    return out


def _is_vertex(n: fx.Node) -> bool:
    return n.meta["pc"].role == "vertex"


def _vertex_inputs(n: fx.Node) -> list[fx.Node]:
    return [a for a in n.all_input_nodes if a.meta["pc"].role in ("vertex", "struct", "identity")]


def _reads_only_inputs(n: fx.Node) -> bool:
    return all(a.meta["pc"].role in ("input", "const", "meta") for a in n.all_input_nodes)


def _parametric(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A layer starts at an op with trainable parameters (normalisation layers excepted: they
    join the layer before them)."""
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        if isinstance(mod, _NORMS):
            return False
        return any(p.requires_grad for p in mod.parameters())
    if _NORM_NAMES.search(str(getattr(n.target, "__name__", n.target))):
        return False
    return any(a.meta["pc"].role in ("param", "param_op") for a in n.all_input_nodes)


def _partition(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Chains of vertex nodes, each a layer, in graph order."""
    group_of: dict[fx.Node, list[fx.Node]] = {}
    groups: list[list[fx.Node]] = []
    for n in gm.graph.nodes:
        if not _is_vertex(n):
            continue
        ins = _vertex_inputs(n)
        prev = ins[0] if len(ins) == 1 else None
        extend = (
            prev is not None
            and prev in group_of
            and not _parametric(gm, n)
            and len(prev.users) == 1
            and _is_vertex(prev)
        )
        if extend:
            group_of[prev].append(n)
            group_of[n] = group_of[prev]
        else:
            group_of[n] = [n]
            groups.append(group_of[n])
    # parameter-free ops on the clamped inputs alone join the one layer they feed
    for g in list(groups):
        head = g[0]
        if len(g) == 1 and not _parametric(gm, head) and _reads_only_inputs(head):
            (user,) = head.users if len(head.users) == 1 else (None,)
            starts = user is not None and user in group_of and group_of[user][0] is user
            if starts and _vertex_inputs(user) == [head]:
                group_of[user].insert(0, head)
                groups.remove(g)
    return groups


def _module_name(gm: fx.GraphModule, nodes: list[fx.Node], used: set[str]) -> str:
    """``layer_<the parametric op's module path or node name>``, unique in ``gm``."""
    head = _head(gm, nodes)
    base = "layer_" + re.sub(
        r"\W", "_", str(head.target if head.op == "call_module" else head.name)
    )
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _head(gm: fx.GraphModule, nodes: list[fx.Node]) -> fx.Node:
    """The op a layer is named after: its parametric op (else its first)."""
    return next((n for n in nodes if _parametric(gm, n)), nodes[0])


def _fuse(gm: fx.GraphModule, nodes: list[fx.Node], name: str, vertex: str) -> None:
    infos = [n.meta["pc"] for n in nodes]
    last = infos[-1]
    sub, ins, outs = fuse_as_graphmodule(gm, nodes, name)
    insert_subgm(gm, sub, ins, outs, nodes[-1])
    erase_nodes(gm, nodes)
    fused = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
    fused.meta["pc"] = dataclasses.replace(
        last,
        rule=_combined_rule([i.rule for i in infos], [n.target for n in nodes]),
        depends_on_params=any(i.depends_on_params for i in infos),
    )
    fused.meta["pc_layer"] = [n.name for n in nodes]
    fused.meta["pc_name"] = vertex  # the vertex name (pccompile.frontend.names)
    end = nodes[-1]
    for n in gm.graph.nodes:  # data movement that named the layer's last op as its source
        info = n.meta.get("pc")
        if info is not None and end in info.sources:
            info.sources = tuple(fused if s is end else s for s in info.sources)


def _combined_rule(rules: list[OpRule | None], targets: list) -> OpRule:
    rules = [r for r in rules if r is not None]
    rng = any(r.replays_rng for r in rules)
    state = any(r.protects_buffers for r in rules)
    kind = "opaque" if rng and state else "stochastic" if rng else "stateful" if state else "pure"
    return OpRule(
        kind=kind,
        note="layer: " + " -> ".join(str(getattr(t, "__name__", t)) for t in targets),
        differentiable=all(r.differentiable for r in rules),
    )
