"""Capture: an ``nn.Module`` becomes an ``fx.GraphModule`` that is safe for PC inference.

Reads: the user's module (never mutated; training flags are set for the trace and restored).
Writes: a new GraphModule sharing the original's submodules and Parameter objects, in which
in-place ops have been rewritten to their out-of-place twins (value nodes must never be mutated).
Invariants: standard ``torch.nn`` layers and user-named modules are leaves (one call node each);
the graph computes exactly what the module computes in the traced training mode.
"""

from __future__ import annotations

import copy
import linecache
import os
import re
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import TraceError, UnsupportedOpError
from .ops import check_method, inplace_twin

__all__ = ["PCTracer", "capture", "functionalize"]

_TORCH_DIR = os.path.dirname(torch.__file__)


class PCTracer(fx.Tracer):
    """``torch.fx`` tracer with pccompile's leaf policy.

    Standard ``torch.nn`` layers are leaves (as in FX's default policy); so is any module whose
    class is in ``leaf_types`` or whose qualified name is in ``leaf_names``.
    """

    def __init__(self, leaf_types: Sequence[type] = (), leaf_names: Iterable[str] = ()):
        super().__init__()
        self.leaf_types = tuple(leaf_types)
        self.leaf_names = set(leaf_names)
        self.current_path = ""
        self.failed_path: str | None = None  # innermost module whose forward raised

    def is_user_leaf(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaf_names or (
            bool(self.leaf_types) and isinstance(m, self.leaf_types)
        )

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self.is_user_leaf(m, module_qualified_name) or super().is_leaf_module(
            m, module_qualified_name
        )

    def call_module(self, m, forward, args, kwargs):
        # Remember where we are, so a trace failure can name the submodule to make a leaf.
        outer = self.current_path
        self.current_path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_path is None:
                self.failed_path = self.current_path
            raise
        finally:
            self.current_path = outer


def _split_leaves(leaf_modules: Iterable[type | str]) -> tuple[list[type], list[str]]:
    types, names = [], []
    for item in leaf_modules:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise TypeError(
                f"leaf_modules entries must be nn.Module classes or qualified names, got {item!r}"
            )
    return types, names


def _user_frame(tb) -> str:
    """The innermost traceback frame outside torch itself, as 'file:line: code'."""
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_TORCH_DIR)]
    frames = [
        f for f in frames if "pccompile" not in f.filename.replace(os.sep, "/").split("/")[-2:-1]
    ]
    if not frames:
        return "<unknown line>"
    f = frames[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"{f.filename}:{f.lineno}: {code}"


def _passes_through(tb, path_suffix: str) -> bool:
    return any(f.filename.endswith(path_suffix) for f in traceback.extract_tb(tb))


def _set_training(model: nn.Module, mode: bool) -> dict[nn.Module, bool]:
    saved = {m: m.training for m in model.modules()}
    model.train(mode)
    return saved


def capture(
    model: nn.Module,
    *,
    training: bool,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> tuple[fx.GraphModule, set[str]]:
    """Trace ``model`` in the given training mode and functionalise it.

    Returns:
        The GraphModule and the set of call_module targets that are user-declared leaves.

    Raises:
        TraceError: the model's Python cannot be traced; the message names the source line,
            the submodule being traced, and the remedies.
        UnsupportedOpError: an in-place op has no out-of-place form.
    """
    types, names = _split_leaves(leaf_modules)
    tracer = PCTracer(types, names)
    saved = _set_training(model, training)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # FX raises TraceError, TypeError, RuntimeError, ... all user-caused
        where = tracer.failed_path or ""
        hint = (
            f"mark submodule {where!r} as a leaf (convert(..., leaf_modules=[{where!r}]))"
            if where
            else "mark the offending submodule as a leaf (convert(..., leaf_modules=[...]))"
        )
        if "does not support item assignment" in str(exc):
            raise TraceError(
                f"Cannot trace {type(model).__name__}: it assigns into a tensor in place "
                f"(x[...] = v)\n  at {_user_frame(exc.__traceback__)}\n"
                f"PC value nodes must not be mutated. Rewrite it out of place (torch.where, "
                f"torch.cat, index_put), or {hint} so it stays one opaque vertex."
            ) from exc
        if _passes_through(exc.__traceback__, os.path.join("nn", "utils", "rnn.py")):
            raise TraceError(
                f"Cannot trace {type(model).__name__}: it packs variable-length sequences\n"
                f"  at {_user_frame(exc.__traceback__)}\n"
                f"The PC graph has one vertex per time step, so the sequence length is fixed at "
                f"conversion. Pad the batch to a fixed length (and mask the loss), or convert one "
                f"PCModule per sequence length; or {hint} so that code stays one opaque vertex."
            ) from exc
        raise TraceError(
            f"Cannot trace {type(model).__name__} with torch.fx: {type(exc).__name__}: {exc}\n"
            f"  at {_user_frame(exc.__traceback__)}\n"
            f"Data-dependent Python control flow (if/for on tensor values, .item() in a condition) "
            f"cannot be captured as a static graph. Remedies: {hint}; or pass the argument that "
            f"drives the control flow as a constant (convert(..., concrete_args={{...}})); or "
            f"hide the function from tracing with torch.fx.wrap."
        ) from exc
    finally:
        for m, mode in saved.items():
            m.training = mode
    for node in graph.nodes:  # a concretised argument defaults to its concrete value
        if node.op == "placeholder" and concrete_args:
            name = (
                node.target if node.target in concrete_args else re.sub(r"_\d+$", "", node.target)
            )
            if name in concrete_args:  # FX renames it flip -> flip_1 and asserts its value
                node.args = (concrete_args[name],)
    gm = fx.GraphModule(tracer.root, graph, class_name=f"PC{type(model).__name__}")
    user_leaves = {
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and tracer.is_user_leaf(gm.get_submodule(n.target), n.target)
    }
    functionalize(gm, training)
    return gm, user_leaves


def functionalize(gm: fx.GraphModule, training: bool) -> None:
    """Rewrite in-place ops out of place, in ``gm`` (a fresh GraphModule owned by pccompile).

    ``x.relu_()``, ``x += y``, ``F.relu(x, inplace=True)`` and modules built with
    ``inplace=True`` would overwrite tensors that PC keeps as value nodes. Each becomes its
    out-of-place twin, and later readers of the mutated tensor read the new node instead: the
    graph then says explicitly what the in-place code meant.
    """
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        check_method(node)
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if getattr(mod, "inplace", False) is True:
                if any(True for _ in mod.children()) or any(True for _ in mod.parameters()):
                    raise UnsupportedOpError(
                        f"Node {node.name!r} calls module {node.target!r} with inplace=True; it "
                        f"has submodules or parameters, so pccompile cannot make a functional "
                        f"copy. Build it with inplace=False."
                    )
                # A private out-of-place copy; the user's module keeps inplace=True.
                twin = copy.copy(mod)
                twin.inplace = False
                twin.training = training
                new_target = node.target.replace(".", "_") + "_functional"
                gm.add_submodule(new_target, twin)
                node.target = new_target
            continue
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
            continue
        twin = inplace_twin(node)
        if twin is None:
            continue
        node.op, node.target = twin
        mutated = node.args[0]
        if isinstance(mutated, fx.Node):
            # Readers after the in-place op saw the mutated tensor: point them at the result.
            for user in list(mutated.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(mutated, node)
    graph.lint()
    gm.recompile()
