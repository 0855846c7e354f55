"""ATen operators: the rules for graphs captured by ``torch.export`` (call_function nodes whose
target is a ``torch._ops.OpOverload`` such as ``aten.linear.default``).

Reads: an OpOverload's schema and tags, and the declared tables in :mod:`pccompile.ops.names`.
Writes: nothing; :func:`aten_rule` returns the op's :class:`~pccompile.ops.registry.OpRule`,
:func:`aten_inplace_twin` the out-of-place overload of an in-place one.

Every ATen operator declares what pccompile needs in its schema: ``nondeterministic_seeded``
(random draws: ``stochastic``), an argument it writes without returning it (running statistics:
``stateful``, as do the schema-silent batch-norm names in ``STATEFUL_NAMES``), and in-place
forms named with a trailing underscore, rewritten to their functional twins before rules are
read. Results that depend only on their arguments' shapes, dtypes or devices
(``NO_GRADIENT_NAMES``: ``zeros_like`` ...) are constants of the pass.
"""

from __future__ import annotations

import functools

import torch
from torch._ops import OpOverload

from .names import NO_GRADIENT_NAMES, STATEFUL_NAMES, STOCHASTIC_NAMES
from .oprule import OpRule

__all__ = ["aten_inplace_twin", "aten_name", "aten_rule", "is_aten"]


def is_aten(target: object) -> bool:
    return isinstance(target, OpOverload)


def aten_name(op: OpOverload) -> str:
    """The operator's name without namespace and overload: ``add_`` for ``aten::add_.Tensor``."""
    return op._schema.name.split("::")[-1]


@functools.cache
def aten_rule(op: OpOverload) -> OpRule:
    """The rule torch's schema declares for ``op`` (see the module docstring)."""
    base = aten_name(op).lstrip("_")
    if base in STOCHASTIC_NAMES or torch.Tag.nondeterministic_seeded in op.tags:
        kind = "stochastic"
    elif base in STATEFUL_NAMES or _writes_unreturned(op):
        kind = "stateful"
    else:
        kind = "pure"
    note = f"ATen schema {op._schema.name}" if kind != "pure" else ""
    return OpRule(kind, note, base not in NO_GRADIENT_NAMES)


def _writes_unreturned(op: OpOverload) -> bool:
    returned = {frozenset(r.alias_info.before_set) for r in op._schema.returns if r.alias_info}
    return any(
        a.alias_info is not None
        and a.alias_info.is_write
        and frozenset(a.alias_info.before_set) not in returned
        for a in op._schema.arguments
    )


def aten_inplace_twin(op: OpOverload) -> OpOverload | None:
    """The functional overload of an in-place ATen op (``add_.Tensor`` -> ``add.Tensor``,
    ``bernoulli_.float`` -> ``bernoulli.p``): the overload of the op without the underscore
    whose arguments have the same types; None when ``op`` is not in-place or none matches."""
    name = aten_name(op)
    if not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    if packet is None:
        return None
    wanted = _argument_types(op)
    for overload in packet.overloads():
        twin = getattr(packet, overload)
        if _argument_types(twin) == wanted:
            return twin
    return None


def _argument_types(op: OpOverload) -> list[str]:
    """The schema's argument types without alias annotations (``Tensor(a!)`` -> ``Tensor``)."""
    return [str(a.type) for a in op._schema.arguments]
