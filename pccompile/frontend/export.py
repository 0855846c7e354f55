"""Capture by ``torch.export``: the front end for code ``torch.fx``'s symbolic tracing cannot
follow (data-dependent sizes, ``torch.finfo``, ``int(size)``, mask builders, ``**kwargs``
signatures: Hugging Face transformers, TF-"same" padding, ``torch.zeros(x.shape[0], H)``).

Reads: the user's module and example inputs (run under fake tensors by ``torch.export``,
non-strict; the module's buffers, RNG and training flags are restored afterwards).
Writes: a new GraphModule whose nodes are ATen operators of the training IR (``aten.linear``,
``aten.conv2d``, ``aten.layer_norm``, ``aten.scaled_dot_product_attention``, ``aten.dropout``
...), reading the user's own Parameter and buffer objects through ``get_attr``; in-place ATen
ops rewritten out of place and buffer updates made explicit (:mod:`.functionalize`). Each
node is named after the module that called it (``encoder_layer_0_attention_query_linear``), so
graphs, tables and errors read like the model. Inputs and outputs keep the module's structure:
the GraphModule flattens its arguments and rebuilds its output (``ModelOutput``, dicts,
dataclasses registered with pytree) with the specs ``torch.export`` recorded.
Invariants: the graph computes what the module computes in the traced training mode, for
inputs of the example's shapes (sizes are fixed at conversion, as for unrolled RNNs).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.export import Dim

from ..errors import InputError, TraceError
from ..ops.messages import module_path
from ..preserve import preserved, root_hooks_off
from .functionalize import functionalize
from .pytrees import register_dataclasses

__all__ = ["capture_export", "unflatten_output", "without_generation_cache"]


@contextlib.contextmanager
def without_generation_cache(model: nn.Module):
    """While a graph is captured and checked: ``config.use_cache = False`` on every transformers
    config of ``model`` that has it on, restored afterwards.

    A transformers model built as usual (``use_cache=True``, the default) returns a key/value
    ``Cache`` for generation beside its logits. No loss reads it, a PC network has no use for
    it, and no graph can output it (it is not a pytree), so the converted graph simply leaves it
    out (``pcm(ids).logits`` as before; ``cache`` absent). The model itself is left as built (the
    ``bp`` reference rule runs it as it is). Attentions and hidden states are outputs only when
    the config asks for them (``output_attentions``/``output_hidden_states``), and then stay.
    """
    configs = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "use_cache", None) is True:
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg.use_cache = False
    try:
        yield
    finally:
        for cfg in configs.values():
            cfg.use_cache = True


def capture_export(
    model: nn.Module, inputs: tuple, *, training: bool | None, kwargs: dict[str, Any] | None = None
) -> tuple[fx.GraphModule, set[str]]:
    """Capture ``model`` with ``torch.export`` (non-strict) and functionalise the graph.

    Returns:
        The GraphModule, and an empty set (no user leaves: every op is an ATen vertex).

    Raises:
        TraceError: ``torch.export`` cannot capture the model; the message carries its reason.
    """
    try:
        with _custom_functions() as functions:
            exported = _export(model, inputs, kwargs, training)
    except Exception as exc:  # export raises many types, all about the user's code
        raise TraceError(
            f"torch.export cannot capture {type(model).__name__}: {type(exc).__name__}: "
            f"{_first_line(exc)}\n{_export_remedy(exc)}"
        ) from exc
    if functions:
        names = ", ".join(sorted({f.__qualname__ for f in functions}))
        raise TraceError(
            f"torch.export cannot capture {type(model).__name__} exactly: it calls the custom "
            f"torch.autograd.Function {names}, whose forward torch.export traces into ATen ops "
            f"and whose own backward it drops (a straight-through estimator would get "
            f"autograd's gradient through its forward instead). Capture with torch.fx "
            f"(capture='fx'), where the Function stays one vertex whose VJP is its backward: "
            f"make the code fx cannot follow a leaf (leaf_modules=[...]) or traceable."
        )
    flat = exported.module()
    graph = flat.graph
    # A fresh GraphModule over the user's model: get_attr targets resolve to its Parameter and
    # buffer objects (shared, so updates land where BP's forward would make them); constants
    # torch.export lifted out of the code come from its own module.
    root = {
        n.target: _attr(model, n.target, flat)
        for n in graph.nodes
        if n.op in ("get_attr", "call_module")  # call_module: export's input guards
    }
    if "_guards_fn" in root:
        root["_guards_fn"] = _ShapeGuards(root["_guards_fn"])
    gm = fx.GraphModule(root, graph, class_name=f"PC{type(model).__name__}")
    gm._in_spec, gm._out_spec = flat._in_spec, flat._out_spec
    _name_after_modules(graph)
    functionalize(gm, training)
    return gm, set()


def _export(model: nn.Module, inputs: tuple, kwargs: dict | None, training: bool | None) -> Any:
    """``torch.export.export``, non-strict, leaving the model as it was. The batch dimension
    (dimension 0 of every tensor input) is left to export to keep dynamic where the model
    allows (``Dim.AUTO``), so batches of another size need no new conversion; a model export
    cannot trace that way is exported with static shapes. A dataclass output type torch's
    pytree does not know yet is registered (as ``torch.export.register_dataclass`` asks users
    to) and the export retried."""
    dynamic = pytree.tree_map(
        lambda t: {0: Dim.AUTO} if isinstance(t, torch.Tensor) and t.dim() else None,
        tuple(inputs),
    )
    attempts = [dynamic, None]
    registered = False
    while True:
        shapes = attempts[0]
        try:
            with (
                preserved(model, inputs, training=training),
                _quiet_torch_logs(),
                root_hooks_off(model),
            ):
                return torch.export.export(
                    model, tuple(inputs), kwargs or None, dynamic_shapes=shapes, strict=False
                )
        except Exception as exc:
            if "not a known type" in str(exc) and not registered:
                registered = _register_dataclasses(model, inputs, kwargs, training)
                if registered:
                    continue
            if len(attempts) == 1:
                raise
            attempts.pop(0)


@contextlib.contextmanager
def _custom_functions():
    """Record the user-defined ``torch.autograd.Function`` classes the model calls while it is
    exported (torch's own, such as checkpointing, differentiate as their forward does)."""
    real = torch.autograd.Function.__dict__["apply"]
    seen: set[type] = set()

    def apply(cls, *args, **kwargs):
        if not cls.__module__.startswith("torch."):
            seen.add(cls)
        return real.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield seen
    finally:
        torch.autograd.Function.apply = real


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs warnings and errors and prints partial graphs to stderr while it
    tries; what failed reaches the user once, in the TraceError. Logging up to ERROR is off and
    stderr is set aside for the export only."""
    before = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(before)


def _register_dataclasses(model: nn.Module, inputs: tuple, kwargs, training: bool) -> bool:
    with preserved(model, inputs, training=training), torch.no_grad():
        return register_dataclasses(model(*inputs, **(kwargs or {})))


def _export_remedy(exc: BaseException) -> str:
    text = str(exc)
    if "cache_utils" in text:
        return (
            "The model returns a transformers Cache (key/value states for generation) although "
            "its config.use_cache is off (pccompile turns it off while converting). Convert it "
            "without one: a forward that returns the tensors the loss reads."
        )
    if "not a known type" in text:
        return (
            "The model returns (or takes) an object torch's pytree does not know. Register its "
            "type (torch.utils._pytree.register_pytree_node, or torch.export.register_dataclass "
            "for a dataclass), or return tensors, tuples, lists or dicts."
        )
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in text:
        return (
            "Python control flow depends on tensor values, which no static graph captures. "
            "Compute both branches and select with torch.where, or make the decision a "
            "constant of the model."
        )
    return (
        "Remedies: make the failing computation depend on sizes, not tensor values; see "
        "https://pytorch.org/docs/stable/export.html (limitations of torch.export)."
    )


class _ShapeGuards(nn.Module):
    """torch.export's input guards, with a pccompile error: sizes other than a dynamic batch
    are fixed at conversion (the graph was specialised to them)."""

    def __init__(self, guards: nn.Module):
        super().__init__()
        self.guards = guards

    def forward(self, *args: Any) -> Any:
        try:
            return self.guards(*args)
        except AssertionError as exc:
            raise InputError(
                f"The inputs do not have the sizes the model was converted with ({exc}). "
                f"torch.export fixed them at conversion (only the batch dimension stays free, "
                f"where the model allows); convert again with example inputs of these sizes."
            ) from exc


def unflatten_output(gm: fx.GraphModule, flat: Any) -> Any:
    """The module's output from the graph output node's flat values (for graphs captured by
    ``torch.export``; other graphs return their output as it is)."""
    spec = getattr(gm, "_out_spec", None)
    return flat if spec is None else pytree.tree_unflatten(list(flat), spec)


def _attr(model: nn.Module, target: str, fallback: nn.Module) -> Any:
    for root in (model, fallback):
        obj: Any = root
        try:
            for part in target.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise TraceError(f"torch.export refers to {target!r}, which neither module has.")


def _name_after_modules(graph: fx.Graph) -> None:
    """``linear_3`` -> ``encoder_layer_0_attention_query_linear``: the innermost module path
    that called the op, then the op's name (FX keeps names unique)."""
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        path = module_path(node)
        op = re.sub(r"_\d+$", "", node.name)
        if path:
            node._rename(re.sub(r"\W", "_", f"{path}_{op}"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
