"""The catalogue: every rule in :mod:`pccompile.ops` as an :class:`Entry` with a checkable
case (hand-written, from the module table, or found by the probe) or the reason it has none."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import ops
from .base import Case, NotApplicable, eager_check, op_name
from .functions import FUNCTION_CASES
from .modules import MODULE_CASES, MODULE_SKIPS
from .probe import in_fx_graph, probe
from .skips import skip_reason


@dataclass
class Entry:
    """One registry rule: its table, name, rule kind, and a checkable case or a reason."""

    table: str  # "function" | "method" | "module"
    name: str
    key: Any
    kind: str
    case: Case | None = None
    learn: tuple[bool, ...] = ()
    reason: str = ""
    source: str = ""  # "hand-written" | "probe" | "module table"


def _method_call(name: str) -> Callable:
    return lambda t, *rest: getattr(t, name)(*rest)


def _hand_written(e: Entry, hand: Case) -> Entry:
    e.case, e.source = hand, "hand-written" if e.table != "module" else "module table"
    try:
        e.learn = eager_check(hand)
        if e.table != "module":
            in_fx_graph(e.table, e.key, hand, e.learn)
    except NotApplicable as exc:
        e.case, e.reason = None, str(exc)
    return e


def _entry_for(table: str, name: str, key: Any, rule: ops.OpRule, call: Callable | None) -> Entry:
    e = Entry(table, name, key, rule.kind)
    hand = FUNCTION_CASES.get(name) if table != "module" else MODULE_CASES.get(key)
    if hand is not None:
        return _hand_written(e, hand)
    if table == "module":
        e.reason = MODULE_SKIPS.get(key, "no constructor in MODULE_CASES")
        return e
    why = skip_reason(name)
    if why is not None:
        e.reason = why
        return e
    c, got = probe(name, call, table, key)
    if c is None:
        e.reason = got
    else:
        e.case, e.learn, e.source = c, got, "probe"
    return e


@functools.cache
def catalogue() -> tuple[Entry, ...]:
    """Every rule in the registry with its case or reason (probing runs here, once)."""
    entries = []
    modules, functions, methods = ops.registered_rules()
    for cls, rule in modules.items():
        entries.append(_entry_for("module", f"nn.{cls.__name__}", cls, rule, None))
    for fn, rule in functions.items():
        entries.append(_entry_for("function", op_name(fn), fn, rule, fn))
    for name, rule in methods.items():
        entries.append(_entry_for("method", f"Tensor.{name}", name, rule, _method_call(name)))
    return tuple(entries)
