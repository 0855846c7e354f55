"""In-place ops: how each in-place spelling maps to its out-of-place twin.

Reads: an FX node. Writes: nothing; :func:`inplace_twin` returns the twin for
:mod:`pccompile.frontend.functionalize`, or raises for in-place ops that have none.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from .aten import aten_inplace_twin, aten_name, is_aten
from .messages import fn_name, unsupported
from .names import INPLACE_DUNDERS, OPERATOR_INPLACE, UNSUPPORTED_METHODS, is_inplace_name
from .registry import has_method_rule

__all__ = ["OPERATOR_INPLACE", "INPLACE_DUNDERS", "inplace_twin", "is_inplace_name"]


def inplace_twin(node: fx.Node) -> tuple[str, Any] | None:
    """The out-of-place version of an in-place node as ``(op, target)``, or None if not in-place.

    Raises:
        UnsupportedOpError: in-place ops without a functional twin (``x[i] = v``, ``copy_``).
    """
    if node.op == "call_function":
        if is_aten(node.target):
            return _aten_twin(node)
        if node.target in OPERATOR_INPLACE:
            return ("call_function", OPERATOR_INPLACE[node.target])
        if node.target is operator.setitem:
            raise setitem_error(node)
        name = fn_name(node.target)
        if is_inplace_name(name):
            twin = getattr(torch, name[:-1], None) or getattr(F, name[:-1], None)
            if twin is None:
                raise unsupported(node, f"in-place function {name!r} has no out-of-place twin")
            return ("call_function", twin)
    elif node.op == "call_method" and node.target in INPLACE_DUNDERS:
        return ("call_function", INPLACE_DUNDERS[node.target])
    elif node.op == "call_method" and node.target == "__setitem__":
        raise setitem_error(node)
    elif node.op == "call_method" and is_inplace_name(node.target):
        if node.target in UNSUPPORTED_METHODS:
            raise unsupported(node, UNSUPPORTED_METHODS[node.target])
        twin = node.target[:-1]
        if not has_method_rule(twin):
            raise unsupported(node, f"in-place method {node.target!r} has no out-of-place twin")
        return ("call_method", twin)
    return None


def _aten_twin(node: fx.Node) -> tuple[str, Any] | None:
    if not is_inplace_name(aten_name(node.target)):
        return None
    if aten_name(node.target) in UNSUPPORTED_METHODS:
        raise unsupported(node, UNSUPPORTED_METHODS[aten_name(node.target)])
    twin = aten_inplace_twin(node.target)
    if twin is None:
        raise unsupported(node, f"in-place ATen op {node.target} has no out-of-place twin")
    return ("call_function", twin)


def setitem_error(node: fx.Node) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"Node {node.name!r} assigns into a tensor in place (x[...] = v). PC value nodes must "
        f"not be mutated. Rewrite it out of place (torch.where, torch.cat, index_put) or make the "
        f"module that does it a leaf: convert(..., leaf_modules=[...])."
    )
