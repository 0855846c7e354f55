"""Messages about ops: what a node calls and where the user wrote it.

Reads: an FX node (its target, ``nn_module_stack`` and recorded ``stack_trace``). Writes: nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
import torch.fx as fx

from ..errors import UnsupportedOpError

__all__ = ["describe", "fn_name", "source_line", "unsupported"]

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
    where = node.meta.get("nn_module_stack")
    owner = ""
    if where:
        path = list(where.keys())[-1] if isinstance(where, dict) else ""
        if path and not (node.op == "call_module" and path == node.target):
            owner = f" inside module {path!r}"
    return UnsupportedOpError(
        f"Node {node.name!r} ({describe(node)}){owner}: {why}. Fix: mark the enclosing "
        f"submodule as a leaf (convert(..., leaf_modules=['path.to.module'])) so it becomes one "
        f"opaque vertex, or register a rule with pccompile.ops.register_function / "
        f"register_method / register_module."
    )
