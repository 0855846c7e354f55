"""Messages about ops: what a node calls and where the user wrote it.

Reads: an FX node (its target, ``nn_module_stack`` and recorded ``stack_trace``). Writes: nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
import torch.fx as fx
from torch._ops import OpOverload

from ..errors import UnsupportedOpError

__all__ = ["describe", "fn_name", "module_path", "source_line", "unsupported"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__))


def fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", "") or ""


def describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    mod = getattr(node.target, "__module__", None) or ""
    return f"{mod + '.' if mod else ''}{fn_name(node.target) or repr(node.target)}"


def source_line(node: fx.Node) -> str:
    """The user's source line that produced ``node`` ('file:line: code'): the innermost frame
    of its recorded stack trace outside torch and pccompile."""
    lines = (node.stack_trace or "").strip().splitlines()
    frames = []
    for k, line in enumerate(lines):
        m = re.match(r'\s*File "(.+)", line (\d+)', line)
        if m:
            code = lines[k + 1].strip() if k + 1 < len(lines) else ""
            frames.append((m.group(1), m.group(2), code))
    ours = (os.path.dirname(torch.__file__), _PACKAGE_DIR)
    user = [f for f in frames if not f[0].startswith(ours)]
    if not user:
        return f"<unknown line> (node {node.name})"
    path, line, code = user[-1]
    return f"{path}:{line}: {code}"


def unsupported(node: fx.Node, why: str) -> UnsupportedOpError:
    path = module_path(node)
    if node.op == "call_module" and path == node.target:
        path = ""  # the module is the node itself: its own class needs the rule
    owner = f" inside module {path!r}" if path else ""
    if isinstance(node.target, OpOverload):  # a torch.export graph: no leaves to make
        fix = (
            "write that code out of place (or clone() before mutating); torch.fx capture "
            "(capture='fx') can keep the module that does it as a leaf"
        )
    else:
        leaf = (
            f"mark submodule {path!r} as a leaf (convert(..., leaf_modules=[{path!r}])) so it "
            f"becomes one opaque vertex, or "
            if path
            else ""
        )
        fix = (
            f"{leaf}convert with capture='export' (torch.export traces through Python functions "
            f"down to ATen ops), or register a rule with pccompile.ops.register_function / "
            f"register_method / register_module"
        )
    return UnsupportedOpError(f"Node {node.name!r} ({describe(node)}){owner}: {why}. Fix: {fix}.")


def module_path(node: fx.Node) -> str:
    """The qualified name of the innermost module that called ``node`` ("" for the root).
    torch.fx records ``{path: type}``, torch.export ``{key: (path, type)}``."""
    stack = node.meta.get("nn_module_stack")
    if not isinstance(stack, dict) or not stack:
        return ""
    key, value = list(stack.items())[-1]
    return value[0] if isinstance(value, tuple) else key
