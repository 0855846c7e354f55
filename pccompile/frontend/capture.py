"""Capture: an ``nn.Module`` becomes an ``fx.GraphModule`` that is safe for PC inference.

Reads: the user's module (never mutated; training flags are set for the trace and restored).
Writes: a new GraphModule sharing the original's submodules and Parameter objects, in which
in-place ops have been rewritten to their out-of-place twins (value nodes must never be mutated).
Invariants: standard ``torch.nn`` layers and user-named modules are leaves (one call node each);
the graph computes exactly what the module computes in the traced training mode.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..errors import TraceError
from ..ops import OPERATOR_INPLACE
from ..preserve import preserved, python_state
from .functionalize import assign_buffer, functionalize

__all__ = ["PCTracer", "capture"]

_TORCH_DIR = os.path.dirname(torch.__file__)


class PCTracer(fx.Tracer):
    """``torch.fx`` tracer with pccompile's leaf policy.

    Standard ``torch.nn`` layers are leaves (as in FX's default policy); so is any module whose
    class is in ``leaf_types`` or whose qualified name is in ``leaf_names``.
    """

    def __init__(self, leaf_types: Sequence[type] = (), leaf_names: Iterable[str] = ()):
        super().__init__()
        self.record_stack_traces = True  # errors name the user's line (node.stack_trace)
        # Buffers the forward mutates, traced as get_attr proxies so their updates are recorded
        # (see capture: found by a first trace that changed them eagerly).
        self.proxied_buffers: set[str] = set()
        self._buffer_values: dict[str, fx.Proxy] = {}  # buffers assigned a traced value
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

    def trace(self, root, concrete_args=None):
        """Trace with autograd semantics recorded, which symbolic tracing otherwise loses:

        * entering/leaving ``torch.no_grad()``, ``enable_grad()``, ``set_grad_enabled()``
          becomes a :func:`set_grad_mode` node (see :func:`mark_no_grad_regions`);
        * ``MyFunction.apply(x)`` of a custom ``torch.autograd.Function`` stays one call, whose
          backward is the Function's own (not autograd through its forward).
        """
        tracer = self
        real_set = torch._C._set_grad_enabled
        real_apply = torch.autograd.Function.__dict__["apply"]
        real_setattr = nn.Module.__setattr__
        paths = {id(m): p for p, m in root.named_modules(remove_duplicate=False)}
        self._buffer_names = {id(b): n for n, b in root.named_buffers(remove_duplicate=False)}
        self._buffer_values = {}

        def setattr_(mod: nn.Module, name: str, value: Any) -> None:
            # ``self.count = self.count + 1`` on a traced buffer: record the update (``+=`` is
            # an in-place op on the buffer, which functionalize turns into the same update)
            if isinstance(value, fx.Proxy) and name in mod.__dict__.get("_buffers", {}):
                qual = f"{paths[id(mod)]}.{name}".lstrip(".")
                if qual in tracer.proxied_buffers:
                    n = value.node
                    first = n.args[0] if n.args else None
                    inplace = n.target in _PROXY_INPLACE.values() and (
                        getattr(first, "target", None) == qual
                    )
                    if not inplace:
                        target = tracer.create_proxy("get_attr", qual, (), {})
                        tracer.create_proxy("call_function", assign_buffer, (target, value), {})
                    tracer._buffer_values[qual] = value
                    return
            real_setattr(mod, name, value)

        def set_grad(mode: bool) -> None:
            tracer.create_node("call_function", set_grad_mode, (bool(mode),), {})
            real_set(mode)

        def apply(cls, *args, **kwargs):
            if any(isinstance(a, fx.Proxy) for a in tree_flatten((args, kwargs))[0]):
                return tracer.create_proxy("call_function", autograd_function(cls), args, kwargs)
            return real_apply.__get__(None, cls)(*args, **kwargs)

        with torch.enable_grad():  # code outside any no_grad block is traced with grad on
            torch._C._set_grad_enabled = set_grad
            torch.autograd.Function.apply = classmethod(apply)
            nn.Module.__setattr__ = setattr_
            for name, op in _PROXY_INPLACE.items():
                setattr(fx.Proxy, name, _record_inplace(op))
            try:
                return super().trace(root, concrete_args)
            finally:
                torch._C._set_grad_enabled = real_set
                torch.autograd.Function.apply = real_apply
                nn.Module.__setattr__ = real_setattr
                for name in _PROXY_INPLACE:
                    delattr(fx.Proxy, name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        name = self._buffer_names.get(id(attr_val)) if isinstance(attr_val, torch.Tensor) else None
        if name is not None and name in self.proxied_buffers:
            if name in self._buffer_values:  # assigned earlier in this forward
                return self._buffer_values[name]
            if name not in parameter_proxy_cache:
                parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
            return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

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


# ``x += y`` on a tensor is in place, but FX's Proxy has no ``__iadd__``, so Python falls back
# to ``x = x + y`` and a write through a view (``v = h[:, 1:]; v += y``) would vanish from the
# graph. During tracing the in-place dunders record the in-place operator instead.
_PROXY_INPLACE = {f"__{op.__name__}__": op for op in OPERATOR_INPLACE}


def _record_inplace(op: Callable) -> Callable:
    def method(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return method


def set_grad_mode(enabled: bool) -> None:
    """Where traced code entered or left a no_grad/enable_grad block: sets the grad mode, as the
    code did (so the GraphModule's own forward keeps the block's semantics)."""
    torch._C._set_grad_enabled(enabled)


_FUNCTION_CALLS: dict[type, Callable] = {}


def autograd_function(cls: type) -> Callable:
    """A named call target for ``cls.apply`` (one per ``torch.autograd.Function`` class)."""
    fn = _FUNCTION_CALLS.get(cls)
    if fn is None:

        def fn(*args, **kwargs):
            return cls.apply(*args, **kwargs)

        fn.__name__ = fn.__qualname__ = f"{cls.__name__}_apply"
        fn.pc_autograd_function = cls
        _FUNCTION_CALLS[cls] = fn
    return fn


def mark_no_grad_regions(graph: fx.Graph) -> None:
    """``node.meta["pc_no_grad"] = True`` on every node traced with grad mode off: no gradient
    flows through them in BP, so they are constants of the pass, never vertices."""
    enabled = True
    for node in graph.nodes:
        if node.op == "call_function" and node.target is set_grad_mode:
            enabled = node.args[0]
        elif not enabled and node.op != "output":
            node.meta["pc_no_grad"] = True


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


def capture(
    model: nn.Module,
    *,
    training: bool | None,
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
    scalars = python_state(model)
    try:
        gm, changed, mutated = _trace(tracer, model, training, concrete_args, scalars)
        if mutated:
            # Code that updates a buffer from constants (``self.count += 1``) ran eagerly
            # during the trace and left no node; trace again with those buffers as proxies.
            tracer.proxied_buffers = mutated
            gm, changed, _ = _trace(tracer, model, training, concrete_args, scalars)
    except Exception as exc:  # FX raises TraceError, TypeError, RuntimeError, ... all user-caused
        raise _trace_error(exc, model, tracer.failed_path) from exc
    _default_to_concrete(gm.graph, concrete_args)
    if changed:
        raise attribute_change_error(model, changed)
    mark_no_grad_regions(gm.graph)
    user_leaves = {
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and tracer.is_user_leaf(gm.get_submodule(n.target), n.target)
    }
    functionalize(gm, training)
    return gm, user_leaves


def attribute_change_error(model: nn.Module, changed: list[str]) -> TraceError:
    """A forward that changes Python attributes: a captured graph would not change them."""
    return TraceError(
        f"The forward of {type(model).__name__} changes Python attributes "
        f"({', '.join(changed)}): a captured graph reads them once, at capture time, so the "
        f"converted model would not see the change. Keep such state in a buffer "
        f"(register_buffer), or make the submodule a leaf (convert(..., leaf_modules=[...]))."
    )


def _trace_error(exc: Exception, model: nn.Module, failed_path: str | None) -> TraceError:
    """The TraceError for a failed trace: the user's line, the submodule, the remedies."""
    where = failed_path or ""
    hint = (
        f"mark submodule {where!r} as a leaf (convert(..., leaf_modules=[{where!r}]))"
        if where
        else "mark the offending submodule as a leaf (convert(..., leaf_modules=[...]))"
    )
    if "does not support item assignment" in str(exc):
        return TraceError(
            f"Cannot trace {type(model).__name__}: it assigns into a tensor in place "
            f"(x[...] = v)\n  at {_user_frame(exc.__traceback__)}\n"
            f"PC value nodes must not be mutated. Rewrite it out of place (torch.where, "
            f"torch.cat, index_put), or {hint} so it stays one opaque vertex."
        )
    if _passes_through(exc.__traceback__, os.path.join("nn", "utils", "rnn.py")):
        return TraceError(
            f"Cannot trace {type(model).__name__}: it packs variable-length sequences\n"
            f"  at {_user_frame(exc.__traceback__)}\n"
            f"The PC graph has one vertex per time step, so the sequence length is fixed at "
            f"conversion. Pad the batch to a fixed length (and mask the loss), or convert one "
            f"PCModule per sequence length; or {hint} so that code stays one opaque vertex."
        )
    cause, remedy = _fx_cause(exc, hint)
    return TraceError(
        f"Cannot trace {type(model).__name__} with torch.fx: {type(exc).__name__}: {exc}\n"
        f"  at {_user_frame(exc.__traceback__)}\n{cause} Remedies: {remedy}."
    )


# What symbolic tracing could not follow, by the message torch.fx or Python gives.
_FX_CAUSES = (
    (
        ("co_varnames is too small",),
        "The forward takes *args or **kwargs, which torch.fx cannot trace.",
        "convert with capture='export' (torch.export follows any signature), or give the "
        "forward named parameters",
    ),
    (
        ("cannot be used as inputs to control flow", "Proxy object cannot be iterated"),
        "Python control flow depends on a traced tensor (an if/for/while on its value, or "
        "iterating over it), which a static graph cannot capture.",
        "convert with capture='export' when the condition depends only on sizes; otherwise "
        "{hint}, or fix the argument that drives it (convert(..., concrete_args={{...}}))",
    ),
    (
        ("slice indices must be integers", "cannot be interpreted as an integer", "must be real"),
        "A traced size is used as a Python number (int(), math.*, range() or a slice bound), "
        "which torch.fx cannot trace.",
        "convert with capture='export' (torch.export traces sizes), or {hint}",
    ),
)


def _fx_cause(exc: BaseException, hint: str) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}"
    for needles, cause, remedy in _FX_CAUSES:
        if any(n in text for n in needles):
            return cause, remedy.format(hint=hint)
    return (
        "Symbolic tracing cannot follow this code.",
        f"convert with capture='export'; or {hint}; or hide the function from tracing with "
        f"torch.fx.wrap",
    )


def _default_to_concrete(graph: fx.Graph, concrete_args: dict[str, Any] | None) -> None:
    """A concretised argument's placeholder defaults to its concrete value (FX renames it, e.g.
    ``flip`` -> ``flip_1``, and asserts the value in the graph)."""
    for node in graph.nodes:
        if node.op == "placeholder" and concrete_args:
            name = (
                node.target if node.target in concrete_args else re.sub(r"_\d+$", "", node.target)
            )
            if name in concrete_args:
                node.args = (concrete_args[name],)


def _trace(
    tracer: PCTracer,
    model: nn.Module,
    training: bool | None,
    concrete_args: dict | None,
    scalars: dict,
) -> tuple[fx.GraphModule, list[str], set[str]]:
    """One trace, with the model's state restored afterwards. Returns the GraphModule (built
    before the restore: it takes the tensor constants FX stored on the root), the Python
    attributes the forward changed, and the buffers it mutated eagerly."""
    with preserved(model, training=training):
        before = {n: (b, b._version) for n, b in model.named_buffers(remove_duplicate=False)}
        graph = tracer.trace(model, concrete_args=concrete_args)
        gm = fx.GraphModule(tracer.root, graph, class_name=f"PC{type(model).__name__}")
        changed = sorted(k for k, v in python_state(model).items() if scalars.get(k, v) != v)
        after = dict(model.named_buffers(remove_duplicate=False))
        mutated = {n for n, (b, v) in before.items() if after.get(n) is not b or b._version != v}
    return gm, changed, mutated
