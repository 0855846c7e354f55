"""Functionalize: in-place ops become out-of-place twins; buffer updates become explicit nodes.

Reads: a freshly traced GraphModule (owned by pccompile; the user's module is never changed).
Writes: the same GraphModule, rewritten in place: every in-place op replaced by its out-of-place
twin and later readers pointed at the result; an :func:`assign_buffer` node after each update of
a buffer; ``node.meta["pc_inplace_of"]`` on every rewritten node (the tensor it mutated).
Invariant: the graph computes what the module computes, and changes the module's buffers exactly
as its forward does (once per run).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TraceError, UnsupportedOpError
from ..ops import check_method, inplace_twin, source_line
from ..ops.aten import aten_name, is_aten
from ..ops.messages import fn_name
from ..ops.names import CONSTANT_FACTORIES

__all__ = ["assign_buffer", "functionalize"]


def assign_buffer(buffer: torch.Tensor, value: torch.Tensor) -> None:
    """Where traced code updated a buffer in place (``self.count += 1``, ``mu.lerp_(m)``):
    write the new value into the module's buffer. Running the graph makes the update once, as
    the module's forward does; PC inference replays it once per batch (the feed-forward pass)."""
    with torch.no_grad():
        buffer.copy_(value)


def functionalize(gm: fx.GraphModule, training: bool | None) -> None:
    """Rewrite in-place ops out of place, in ``gm`` (a fresh GraphModule owned by pccompile).

    ``x.relu_()``, ``x += y``, ``F.relu(x, inplace=True)`` and modules built with
    ``inplace=True`` would overwrite tensors that PC keeps as value nodes. Each becomes its
    out-of-place twin, and later readers of the mutated tensor read the new node instead: the
    graph then says explicitly what the in-place code meant. A mutated buffer also gets an
    :func:`assign_buffer` node, so the module's state changes exactly as in its forward.
    ``node.meta["pc_inplace_of"]`` keeps the mutated node: :func:`pccompile.annotate.annotate`
    refuses a mutation that other tensors would see through shared memory (a view).

    Raises:
        TraceError: the forward updates a parameter in place.
        UnsupportedOpError: an in-place module that cannot be copied, an op without a twin.
    """
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    buffer_of: dict[fx.Node, fx.Node] = {}  # value node -> the get_attr of the buffer it updates
    constants = constant_nodes(graph)
    for node in list(graph.nodes):
        check_method(node)
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if getattr(mod, "inplace", False) is not True:
                continue
            if any(True for _ in mod.children()) or any(True for _ in mod.parameters()):
                raise UnsupportedOpError(
                    f"Node {node.name!r} calls module {node.target!r} with inplace=True; it "
                    f"has submodules or parameters, so pccompile cannot make a functional "
                    f"copy. Build it with inplace=False."
                )
            # A private out-of-place copy; the user's module keeps inplace=True.
            twin = copy.copy(mod)
            twin.inplace = False
            twin.training = mod.training if training is None else training
            new_target = node.target.replace(".", "_") + "_functional"
            gm.add_submodule(new_target, twin)
            node.target = new_target
        elif node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node in constants:  # a constant of the pass mutated in place: runs as written
            continue
        else:
            twin = inplace_twin(node)
            if twin is None:
                continue
            node.op, node.target = twin
        mutated = node.args[0] if node.args else None
        if not isinstance(mutated, fx.Node):
            continue
        node.meta["pc_inplace_of"] = mutated
        # Readers after the in-place op saw the mutated tensor: point them at the result.
        for user in list(mutated.users):
            if user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(mutated, node)
        buffer = mutated if mutated.op == "get_attr" else buffer_of.get(mutated)
        if buffer is None:
            continue
        if isinstance(_attr(gm, buffer.target), nn.Parameter):
            raise TraceError(
                f"The forward updates parameter {buffer.target!r} in place\n  at "
                f"{source_line(node)}\nBP would differentiate through a changing weight; "
                f"compute the new value out of place, or keep it in a buffer."
            )
        buffer_of[node] = buffer
        with graph.inserting_after(node):
            graph.call_function(assign_buffer, (buffer, node))
    graph.lint()
    gm.recompile()


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# the names torch.fx and torch.export give literal tensors they lift out of the code
_LIFTED = re.compile(r"(^|\.)(_tensor_constant|lifted_tensor_)\d+$")


def constant_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes computed from factories and literals only (``x.new_zeros(n, n)``, ``torch.ones``,
    and what is computed from those alone): constants of the pass, whatever their inputs' sizes.

    An in-place write among them (``mask[:2, :2] = 1``) needs no functional rewrite: the
    feed-forward pass runs them once, in order, exactly as the module does, and no value node,
    parameter or buffer sees the write.
    """
    constants: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "get_attr" and _LIFTED.search(node.target):
            constants.add(node)  # a literal tensor the tracer lifted out of the code
        if node.op not in ("call_function", "call_method"):
            continue
        if _target_name(node).lstrip("_").rstrip("_") in CONSTANT_FACTORIES or all(
            a in constants for a in node.all_input_nodes
        ):
            constants.add(node)
    return constants


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return node.target
    return aten_name(node.target) if is_aten(node.target) else fn_name(node.target)
