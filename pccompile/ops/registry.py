"""Op registry: how a traced FX node becomes (part of) a PC vertex.

Reads: an FX node (``call_module`` / ``call_function`` / ``call_method``) and the module it calls.
Writes: nothing; returns the node's :class:`OpRule`, or raises :class:`UnsupportedOpError`.

A vertex's local Jacobians come from autograd over the vertex's own function, so a rule does not
restate derivatives. It states what the engine must know to *re-evaluate* that function during
inference without changing the answer: whether it draws random numbers (masks are replayed),
whether it mutates module state (buffers such as BatchNorm running statistics are protected),
or whether it cannot be part of a PC graph at all. In-place ops are rewritten to their
out-of-place twins (:mod:`pccompile.ops.inplace`) before rules are read. There is no fallback:
an op with no rule raises.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.parametrize import is_parametrized

from .aten import aten_rule, is_aten
from .messages import fn_name, unsupported
from .names import (
    CONTAINERS,
    NO_GRADIENT_NAMES,
    OPERATOR_PURE,
    PYTHON_LEVEL_PURE,
    PYTHON_LEVEL_STOCHASTIC,
    STATEFUL_MODULES,
    STATEFUL_NAMES,
    STOCHASTIC_MODULES,
    STOCHASTIC_NAMES,
    UNSUPPORTED_METHODS,
    is_inplace_name,
)
from .oprule import Kind, OpRule

__all__ = [
    "OpRule",
    "register_function",
    "register_method",
    "register_module",
    "rule_for",
    "has_method_rule",
    "check_method",
    "registered_ops",
    "registered_rules",
    "needs_replay",
]

_MODULES: dict[type, OpRule] = {}
_FUNCTIONS: dict[Callable, OpRule] = {}
_METHODS: dict[str, OpRule] = {}
_UNSUPPORTED: dict[Any, str] = {}


def _register(table: dict, key: Any, rule: OpRule, what: str) -> None:
    if key in table:
        raise ValueError(f"{what} {key!r} already has a rule ({table[key]}); register it once.")
    table[key] = rule


def register_module(cls: type, kind: Kind = "pure", note: str = "") -> None:
    """Declare how calls to leaf modules of class ``cls`` behave (registering twice is an error).

    Example:
        >>> import pccompile.ops as ops
        >>> class MyNorm(torch.nn.Module): ...
        >>> ops.register_module(MyNorm, kind="stateful")
    """
    _register(_MODULES, cls, OpRule(kind, note), "module class")


def register_function(fn: Callable, kind: Kind = "pure", note: str = "") -> None:
    """Declare how a ``call_function`` target (e.g. a ``torch.fx.wrap``-ed function) behaves."""
    _register(_FUNCTIONS, fn, OpRule(kind, note), "function")


def register_method(name: str, kind: Kind = "pure", note: str = "") -> None:
    """Declare how a ``Tensor`` method called as ``x.name(...)`` behaves."""
    _register(_METHODS, name, OpRule(kind, note), "method")


def _register_torch_nn() -> None:
    for name in nn.modules.__all__:
        cls = getattr(nn, name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name in CONTAINERS:
            continue
        if name in STOCHASTIC_MODULES:
            kind = "stochastic"
        elif name in STATEFUL_MODULES:
            kind = "stateful"
        else:
            kind = "pure"
        register_module(cls, kind)


def _aten_kind(name: str) -> Kind | None:
    """The kind torch's own operator schemas declare for ``name`` (None: no ATen operator).

    ``stochastic`` where an overload is tagged ``nondeterministic_seeded``; ``stateful`` where an
    overload writes an argument it does not return (a running statistic, not an ``out=``)."""
    packet = None
    for candidate in (name, name.lstrip("_")):
        packet = getattr(torch.ops.aten, candidate, None)
        if packet is not None and hasattr(packet, "overloads"):
            break
        packet = None
    if packet is None:
        return None
    kind: Kind = "pure"
    for overload in packet.overloads():
        op = getattr(packet, overload)
        if torch.Tag.nondeterministic_seeded in op.tags:
            return "stochastic"
        if "out" in overload or "values" in overload:
            continue
        returned = {frozenset(r.alias_info.before_set) for r in op._schema.returns if r.alias_info}
        for a in op._schema.arguments:
            info = a.alias_info
            if info and info.is_write and frozenset(info.before_set) not in returned:
                kind = "stateful"
    return kind


def _classify_name(name: str) -> OpRule | None:
    """The declared rule for a torch function or method name; None if nobody declared it (the
    op is then left out of the registry, and a model using it gets UnsupportedOpError)."""
    base = name.lstrip("_")
    if base in STOCHASTIC_NAMES or base in PYTHON_LEVEL_STOCHASTIC:
        kind: Kind | None = "stochastic"
    elif base in STATEFUL_NAMES:
        kind = "stateful"
    elif name in PYTHON_LEVEL_PURE or base in PYTHON_LEVEL_PURE:
        kind = "pure"
    else:
        kind = _aten_kind(name)
    if kind is None:
        return None
    return OpRule(kind, "declared" if kind != "pure" else "", base not in NO_GRADIENT_NAMES)


def _register_torch_api() -> None:
    for fn in OPERATOR_PURE:
        register_function(fn)
    for namespace, fns in torch.overrides.get_overridable_functions().items():
        for fn in fns:
            name = fn_name(fn)
            if not name:
                continue
            if namespace is torch.Tensor:
                if name in _METHODS or name in UNSUPPORTED_METHODS or is_inplace_name(name):
                    continue
                rule, table, what, key = _classify_name(name), _METHODS, "method", name
            else:
                if fn in _FUNCTIONS or is_inplace_name(name):
                    continue
                rule, table, what, key = _classify_name(name), _FUNCTIONS, "function", fn
            if rule is not None:
                _register(table, key, rule, what)
    # Tensor attributes read as ``x.T``/``x.shape`` arrive as getattr; dunder methods that FX
    # records by name (``x.__getitem__``) are pure too.
    # Tensor factories called as methods are not in the overridable list; they are pure.
    for name in (
        "__getitem__",
        "__len__",
        "size",
        "dim",
        "contiguous",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty",
        "new_tensor",
        "unflatten",
    ):
        _METHODS.setdefault(name, _classify_name(name) or OpRule("pure"))


def _register_torchvision() -> None:
    """Functions torchvision hides from FX with ``torch.fx.wrap``; they arrive as call_function."""
    try:
        import torchvision.models.swin_transformer as swin
        from torchvision.ops import stochastic_depth
    except Exception:  # torchvision is a dependency, but keep ops importable without it
        return
    register_function(stochastic_depth, "stochastic", "torchvision StochasticDepth")
    for name, kind in (
        ("shifted_window_attention", "stochastic"),
        ("_patch_merging_pad", "pure"),
        ("_get_relative_position_bias", "pure"),
    ):
        fn = getattr(swin, name, None)
        if fn is not None and fn not in _FUNCTIONS:
            register_function(fn, kind, "torchvision Swin")


_register_torch_nn()
_register_torch_api()
_TORCHVISION_DONE = False


def _lazy_torchvision() -> bool:
    """Register torchvision's wrapped functions once torchvision is in use (importing it here
    would double pccompile's import time for users who never touch it)."""
    global _TORCHVISION_DONE
    if _TORCHVISION_DONE or "torchvision" not in sys.modules:
        return False
    _TORCHVISION_DONE = True
    _register_torchvision()
    return True


def has_method_rule(name: str) -> bool:
    return name in _METHODS


def check_method(node: fx.Node) -> None:
    """Refuse methods that can never be part of a PC graph, before anything runs."""
    if node.op == "call_method" and node.target in UNSUPPORTED_METHODS:
        raise unsupported(node, UNSUPPORTED_METHODS[node.target])


def rule_for(node: fx.Node, module: nn.Module | None = None, user_leaf: bool = False) -> OpRule:
    """The rule for a node that computes on PC values.

    Args:
        node: a call_module, call_function or call_method node.
        module: the called module, for call_module nodes.
        user_leaf: the module was declared a leaf by the user (it gets the ``opaque`` rule).

    Raises:
        UnsupportedOpError: the op has no rule, naming the node, the op and the fixes.
    """
    if node.op == "call_module":
        return _with_hidden_state(module, _module_rule(node, module, user_leaf))
    if node.op == "call_function":
        if getattr(node.target, "pc_autograd_function", None) is not None:
            # its own backward gives the VJP; its forward may draw or mutate: assume the worst
            return OpRule("opaque", "custom torch.autograd.Function")
        if is_aten(node.target):  # torch.export graphs: the operator's schema declares it
            return aten_rule(node.target)
        rule = _FUNCTIONS.get(node.target)
        if rule is None and _lazy_torchvision():
            rule = _FUNCTIONS.get(node.target)
        if rule is None:
            raise unsupported(node, "no rule for this function")
        return rule
    if node.op == "call_method":
        if node.target in UNSUPPORTED_METHODS:
            raise unsupported(node, UNSUPPORTED_METHODS[node.target])
        rule = _METHODS.get(node.target)
        if rule is None:
            raise unsupported(node, "no rule for this Tensor method")
        return rule
    raise unsupported(node, f"unexpected FX op {node.op!r}")


def _module_rule(node: fx.Node, module: nn.Module, user_leaf: bool) -> OpRule:
    if user_leaf:  # the user's own registration wins; otherwise assume the worst
        return _MODULES.get(type(module), OpRule("opaque", "user leaf"))
    for cls in type(module).__mro__:
        rule = _MODULES.get(cls)
        if rule is not None and cls.__module__.startswith("torch.nn") == (
            type(module).__module__.startswith("torch.nn")
        ):
            return rule
    raise unsupported(node, f"no rule for leaf module class {type(module).__qualname__}")


def _with_hidden_state(module: nn.Module, rule: OpRule) -> OpRule:
    """A layer class's rule, made stateful when this instance carries state the class does not
    declare: a parametrization (spectral norm's power iteration updates buffers on every call)
    or forward hooks (the old ``nn.utils.spectral_norm`` API). Re-evaluations then start from
    the feed-forward pass's buffers instead of advancing them."""
    hooked = any(
        getattr(m, "_forward_pre_hooks", None) or getattr(m, "_forward_hooks", None)
        for m in module.modules()
    )
    if rule.protects_buffers or not (is_parametrized(module) or hooked):
        return rule
    kind: Kind = "opaque" if rule.replays_rng else "stateful"
    return OpRule(kind, "parametrized or hooked instance", rule.differentiable)


def registered_rules() -> tuple[dict[type, OpRule], dict[Callable, OpRule], dict[str, OpRule]]:
    """The registry's tables (copies): module classes, functions and Tensor method names."""
    _lazy_torchvision()
    return dict(_MODULES), dict(_FUNCTIONS), dict(_METHODS)


def registered_ops() -> dict[str, dict[str, OpRule]]:
    """A snapshot of the registry (for documentation and coverage tests)."""
    _lazy_torchvision()
    return {
        "modules": {f"{c.__module__}.{c.__qualname__}": r for c, r in _MODULES.items()},
        "functions": {
            f"{getattr(f, '__module__', '') or ''}.{fn_name(f)}": r for f, r in _FUNCTIONS.items()
        },
        "methods": {f"Tensor.{n}": r for n, r in _METHODS.items()},
    }


# Random or stateful only in training mode: in eval mode a pure function (running statistics
# read, no draws).
_EVAL_PURE_MODULES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)
# Functions whose draws / batch statistics hang on a flag: (position, keyword, default).
_FLAGGED = {
    torch.nn.functional.dropout: (2, "training", True),
    torch.nn.functional.dropout1d: (2, "training", True),
    torch.nn.functional.dropout2d: (2, "training", True),
    torch.nn.functional.dropout3d: (2, "training", True),
    torch.nn.functional.alpha_dropout: (2, "training", False),
    torch.nn.functional.feature_alpha_dropout: (2, "training", False),
    torch.nn.functional.batch_norm: (5, "training", False),
    torch.nn.functional.instance_norm: (5, "use_input_stats", True),
}


def needs_replay(node: fx.Node, module: nn.Module | None, rule: OpRule | None) -> bool:
    """Whether re-evaluating ``node`` needs the feed-forward pass's recorded RNG state or
    buffers (the one classification of purity the loops share): its rule is random or stateful,
    and this call is not one of the cases that are pure as traced: a BatchNorm / InstanceNorm /
    Dropout module (or a module made only of those and of buffer-free torch.nn layers) in eval
    mode, or a dropout / batch_norm / instance_norm function called with its flag off."""
    if rule is None or not (rule.replays_rng or rule.protects_buffers):
        return False
    if node.op == "call_module" and module is not None:
        if module.training:
            return True
        leaves = [m for m in module.modules() if not list(m.children())]
        return not all(isinstance(m, _EVAL_PURE_MODULES) or _stateless(m) for m in leaves)
    flag = _FLAGGED.get(node.target) if node.op == "call_function" else None
    if flag is not None:
        pos, key, default = flag
        value = node.kwargs.get(key, node.args[pos] if len(node.args) > pos else default)
        return value is not False  # a traced flag is a constant; anything else: assume random
    return True


def _stateless(m: nn.Module) -> bool:
    return not list(m.buffers(recurse=False)) and type(m).__module__.startswith("torch.nn")
