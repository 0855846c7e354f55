"""Op registry: how a traced FX node becomes (part of) a PC vertex.

Reads: an FX node (``call_module`` / ``call_function`` / ``call_method``) and the module it calls.
Writes: nothing; returns the node's :class:`OpRule`, or raises :class:`UnsupportedOpError`.

A vertex's local Jacobians come from autograd over the vertex's own function, so a rule does not
restate derivatives. It states what the engine must know to *re-evaluate* that function during
inference without changing the answer: whether it draws random numbers (masks are replayed),
whether it mutates module state (buffers such as BatchNorm running statistics are protected),
whether it is in-place (rewritten to its out-of-place twin by :mod:`pccompile.capture`), or
whether it cannot be part of a PC graph at all. There is no fallback: an op with no rule raises.
"""

from __future__ import annotations

import builtins
import operator
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrize import is_parametrized

from .errors import UnsupportedOpError

__all__ = [
    "OpRule",
    "register_function",
    "register_method",
    "register_module",
    "rule_for",
    "inplace_twin",
    "check_method",
    "registered_ops",
    "source_line",
]

Kind = Literal["pure", "stochastic", "stateful", "opaque"]


@dataclass(frozen=True)
class OpRule:
    """What the engine must know about an op.

    kind:
        ``pure``: a deterministic function of its arguments and parameters.
        ``stochastic``: draws random numbers; the feed-forward RNG state is replayed whenever the
        vertex is re-evaluated, so every evaluation sees the same masks as BP's forward.
        ``stateful``: mutates module buffers (running statistics); re-evaluations run on copies.
        ``opaque``: a user-declared leaf; treated as both stochastic and stateful.
    """

    kind: Kind = "pure"
    note: str = ""
    differentiable: bool = True  # False: no gradient reaches the inputs (new_zeros, bernoulli)

    @property
    def replays_rng(self) -> bool:
        return self.kind in ("stochastic", "opaque")

    @property
    def protects_buffers(self) -> bool:
        return self.kind in ("stateful", "opaque")


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


# --------------------------------------------------------------------------------------------
# torch.nn layers. Containers are traced through (never leaves); everything else in the
# torch.nn catalogue is classified here by name so a new torch layer needs a deliberate entry.
_STOCHASTIC_MODULES = {
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "RReLU",
    "FractionalMaxPool2d",
    "FractionalMaxPool3d",
    "MultiheadAttention",
    "Transformer",
    "TransformerEncoder",
    "TransformerDecoder",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "RNN",
    "LSTM",
    "GRU",
}
_STATEFUL_MODULES = {
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
}
_CONTAINERS = {
    "Module",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "ParameterList",
    "ParameterDict",
    "Container",
}


def _register_torch_nn() -> None:
    for name in nn.modules.__all__:
        cls = getattr(nn, name, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name in _CONTAINERS:
            continue
        if name in _STOCHASTIC_MODULES:
            kind = "stochastic"
        elif name in _STATEFUL_MODULES:
            kind = "stateful"
        else:
            kind = "pure"
        register_module(cls, kind)


# --------------------------------------------------------------------------------------------
# torch functions and Tensor methods: the universe is torch's own overridable API (its public
# operators); each is pure unless it is random, mutates running statistics, is in-place, or is
# listed as unsupported below.
_STOCHASTIC_NAMES = {
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "feature_dropout",
    "native_dropout",
    "rrelu",
    "bernoulli",
    "multinomial",
    "normal",
    "poisson",
    "rand_like",
    "randn_like",
    "randint_like",
    "gumbel_softmax",
    "uniform",
    "multi_head_attention_forward",
    "scaled_dot_product_attention",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "fractional_max_pool2d_with_indices",
    "fractional_max_pool3d_with_indices",
}
_STATEFUL_NAMES = {"batch_norm", "instance_norm"}
# Results that depend on their tensor arguments' shape, dtype or device only (or are detached):
# BP passes no gradient through them, so they are constants of the pass (computed once, in the
# feed-forward pass, which also draws a random mask once per batch), never vertices.
_NO_GRADIENT_NAMES = {
    "new_empty",
    "new_zeros",
    "new_ones",
    "new_full",
    "new_tensor",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "randint_like",
    "detach",
}
_UNSUPPORTED_METHODS = {
    "backward": "calls backward inside forward",
    "register_hook": "registers an autograd hook inside forward",
    "retain_grad": "touches autograd state inside forward",
    "requires_grad_": "changes requires_grad inside forward",
    "data_ptr": "depends on memory addresses",
    "set_": "replaces a tensor's storage",
    "resize_": "resizes a tensor in place",
    "resize_as_": "resizes a tensor in place",
    "copy_": "copies into an existing tensor in place",
    "numpy": "leaves torch",
}
# In-place operator spellings and their out-of-place twins.
OPERATOR_INPLACE = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}
_OPERATOR_PURE = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.matmul,
    operator.neg,
    operator.pos,
    operator.abs,
    operator.getitem,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.invert,
    operator.lshift,
    operator.rshift,
    builtins.getattr,
    builtins.len,
]


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", "") or ""


# torch's Python-level API without an ATen operator of the same name: each declared here.
_PYTHON_LEVEL_PURE = {
    # Tensor dunders and dtype conversions
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rdiv__",
    "__div__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__rpow__",
    "__matmul__",
    "__rmatmul__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__invert__",
    "__rand__",
    "__ror__",
    "__rxor__",
    "__rlshift__",
    "__rrshift__",
    "__len__",
    "__reversed__",
    "__bool__",
    "__nonzero__",
    "__int__",
    "__long__",
    "__float__",
    "__complex__",
    "__index__",
    "__format__",
    "__repr__",
    "bfloat16",
    "bool",
    "byte",
    "cdouble",
    "cfloat",
    "char",
    "double",
    "float",
    "half",
    "int",
    "long",
    "short",
    "type",
    "dim_order",
    "ndimension",
    "nelement",
    "is_shared",
    "_is_view",
    "tolist",
    "unique",
    "lu",
    # torch / torch.functional
    "unravel_index",
    "dsmm",
    "hsmm",
    "saddmm",
    "spmm",
    "sym_float",
    "sym_int",
    "sym_ite",
    "sym_max",
    "sym_min",
    "sym_not",
    "sym_sum",
    "sym_sqrt",
    # torch.nn.functional written in Python over ATen ops
    "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices",
    "affine_grid",
    "cross_entropy",
    "fold",
    "gaussian_nll_loss",
    "grid_sample",
    "interpolate",
    "linear_cross_entropy",
    "local_response_norm",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "max_unpool1d",
    "multilabel_soft_margin_loss",
    "normalize",
    "softmin",
    "softsign",
    "tanhshrink",
    "triplet_margin_with_distance_loss",
}
# Random initial guesses inside: stochastic.
_PYTHON_LEVEL_STOCHASTIC = {"lobpcg", "pca_lowrank", "svd_lowrank"}
# ATen schemas that update running statistics without declaring it (no ``Tensor(a!)``).
_STATEFUL_NAMES |= {
    "native_batch_norm",
    "batch_norm_update_stats",
    "batch_norm_impl_index",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "native_batch_norm_legit",
    "native_batch_norm_legit_functional",
}


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
    if base in _STOCHASTIC_NAMES or base in _PYTHON_LEVEL_STOCHASTIC:
        kind: Kind | None = "stochastic"
    elif base in _STATEFUL_NAMES:
        kind = "stateful"
    elif name in _PYTHON_LEVEL_PURE or base in _PYTHON_LEVEL_PURE:
        kind = "pure"
    else:
        kind = _aten_kind(name)
    if kind is None:
        return None
    return OpRule(kind, "declared" if kind != "pure" else "", base not in _NO_GRADIENT_NAMES)


# ``x.__iadd__(y)`` written out arrives as a call_method: the same in-place ops as ``x += y``.
_INPLACE_DUNDERS = {
    f"__i{op}__": getattr(operator, op)
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "matmul",
        "xor",
        "lshift",
        "rshift",
    )
} | {"__idiv__": operator.truediv, "__iand__": operator.and_, "__ior__": operator.or_}


def _is_inplace_name(name: str) -> bool:
    return (
        (name.endswith("_") and not name.endswith("__"))
        or name in _INPLACE_DUNDERS
        or (name == "__setitem__")
    )


def _register_torch_api() -> None:
    for fn in _OPERATOR_PURE:
        register_function(fn)
    for namespace, fns in torch.overrides.get_overridable_functions().items():
        for fn in fns:
            name = _fn_name(fn)
            if not name:
                continue
            if namespace is torch.Tensor:
                if name in _METHODS or name in _UNSUPPORTED_METHODS or _is_inplace_name(name):
                    continue
                rule, table, what, key = _classify_name(name), _METHODS, "method", name
            else:
                if fn in _FUNCTIONS or _is_inplace_name(name):
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


# --------------------------------------------------------------------------------------------
def inplace_twin(node: fx.Node) -> tuple[str, Any] | None:
    """The out-of-place version of an in-place node as ``(op, target)``, or None if not in-place.

    Raises:
        UnsupportedOpError: in-place ops without a functional twin (``x[i] = v``, ``copy_``).
    """
    if node.op == "call_function":
        if node.target in OPERATOR_INPLACE:
            return ("call_function", OPERATOR_INPLACE[node.target])
        if node.target is operator.setitem:
            raise _setitem_error(node)
        name = _fn_name(node.target)
        if _is_inplace_name(name):
            twin = getattr(torch, name[:-1], None) or getattr(F, name[:-1], None)
            if twin is None:
                raise _unsupported(node, f"in-place function {name!r} has no out-of-place twin")
            return ("call_function", twin)
    elif node.op == "call_method" and node.target in _INPLACE_DUNDERS:
        return ("call_function", _INPLACE_DUNDERS[node.target])
    elif node.op == "call_method" and node.target == "__setitem__":
        raise _setitem_error(node)
    elif node.op == "call_method" and _is_inplace_name(node.target):
        if node.target in _UNSUPPORTED_METHODS:
            raise _unsupported(node, _UNSUPPORTED_METHODS[node.target])
        twin = node.target[:-1]
        if twin not in _METHODS:
            raise _unsupported(node, f"in-place method {node.target!r} has no out-of-place twin")
        return ("call_method", twin)
    return None


def _setitem_error(node: fx.Node) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"Node {node.name!r} assigns into a tensor in place (x[...] = v). PC value nodes must "
        f"not be mutated. Rewrite it out of place (torch.where, torch.cat, index_put) or make the "
        f"module that does it a leaf: convert(..., leaf_modules=[...])."
    )


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    mod = getattr(node.target, "__module__", None) or ""
    return f"{mod + '.' if mod else ''}{_fn_name(node.target) or repr(node.target)}"


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
    ours = (os.path.dirname(torch.__file__), os.path.dirname(__file__))
    user = [f for f in frames if not f[0].startswith(ours)]
    if not user:
        return f"<unknown line> (node {node.name})"
    path, line, code = user[-1]
    return f"{path}:{line}: {code}"


def _unsupported(node: fx.Node, why: str) -> UnsupportedOpError:
    where = node.meta.get("nn_module_stack")
    owner = ""
    if where:
        path = list(where.keys())[-1] if isinstance(where, dict) else ""
        if path and not (node.op == "call_module" and path == node.target):
            owner = f" inside module {path!r}"
    return UnsupportedOpError(
        f"Node {node.name!r} ({_describe(node)}){owner}: {why}. Fix: mark the enclosing "
        f"submodule as a leaf (convert(..., leaf_modules=['path.to.module'])) so it becomes one "
        f"opaque vertex, or register a rule with pccompile.ops.register_function / "
        f"register_method / register_module."
    )


def check_method(node: fx.Node) -> None:
    """Refuse methods that can never be part of a PC graph, before anything runs."""
    if node.op == "call_method" and node.target in _UNSUPPORTED_METHODS:
        raise _unsupported(node, _UNSUPPORTED_METHODS[node.target])


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
        rule = _FUNCTIONS.get(node.target)
        if rule is None and _lazy_torchvision():
            rule = _FUNCTIONS.get(node.target)
        if rule is None:
            raise _unsupported(node, "no rule for this function")
        return rule
    if node.op == "call_method":
        if node.target in _UNSUPPORTED_METHODS:
            raise _unsupported(node, _UNSUPPORTED_METHODS[node.target])
        rule = _METHODS.get(node.target)
        if rule is None:
            raise _unsupported(node, "no rule for this Tensor method")
        return rule
    raise _unsupported(node, f"unexpected FX op {node.op!r}")


def _module_rule(node: fx.Node, module: nn.Module, user_leaf: bool) -> OpRule:
    if user_leaf:  # the user's own registration wins; otherwise assume the worst
        return _MODULES.get(type(module), OpRule("opaque", "user leaf"))
    for cls in type(module).__mro__:
        rule = _MODULES.get(cls)
        if rule is not None and cls.__module__.startswith("torch.nn") == (
            type(module).__module__.startswith("torch.nn")
        ):
            return rule
    raise _unsupported(node, f"no rule for leaf module class {type(module).__qualname__}")


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


def registered_ops() -> dict[str, dict[str, OpRule]]:
    """A snapshot of the registry (for documentation and coverage tests)."""
    _lazy_torchvision()
    return {
        "modules": {f"{c.__module__}.{c.__qualname__}": r for c, r in _MODULES.items()},
        "functions": {
            f"{getattr(f, '__module__', '') or ''}.{_fn_name(f)}": r for f, r in _FUNCTIONS.items()
        },
        "methods": {f"Tensor.{n}": r for n, r in _METHODS.items()},
    }
