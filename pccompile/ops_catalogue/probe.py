"""The probe: for a registry function or method without a hand-written case, try the fixed
argument ``PATTERNS`` in eager mode and keep the first that gives a finite, differentiable
floating output and traces to the op itself."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .base import Arg, Case, NotApplicable, eager_check, f, ix, mask, one_op_class, op_name, spd
from .skips import REASON_NO_PATTERN


# ------------------------------------------------------------------------------ the probe
def _pattern_args(pattern: tuple) -> tuple[tuple[Arg, ...], Callable[[list], list]]:
    """Tensor templates of a pattern and a function that rebuilds the call's arguments."""
    shapes = {"A": (3, 4), "B": (4, 3), "V": (4,), "C": (2, 3, 4), "E": (2, 4, 3)}
    args: list[Arg] = []
    slots: list[Any] = []
    for p in pattern:
        if p == "S":
            slots.append(len(args))
            args.append(spd(4))
        elif p == "[A,A]":
            slots.append([len(args), len(args) + 1])
            args += [f(3, 4), f(3, 4)]
        elif p in ("I", "M"):  # integer and boolean tensors, for the bitwise/integer ops
            slots.append(len(args))
            args.append(ix(3, 4, high=5) if p == "I" else mask(3, 4))
        elif isinstance(p, str):
            slots.append(len(args))
            args.append(f(*shapes[p]))
        else:
            slots.append(("lit", p))

    def rebuild(ts: list) -> list:
        out = []
        for s in slots:
            if isinstance(s, int):
                out.append(ts[s])
            elif isinstance(s, list):
                out.append([ts[i] for i in s])
            else:
                out.append(s[1])
        return out

    return tuple(args), rebuild


# Tried in order; the first that gives a finite differentiable floating output is the case.
# fmt: off
PATTERNS: list[tuple] = [
    ("A",), ("A", "A"), ("A", 1), ("A", "A", "A"), ("A", 0.5), ("A", "B"), ("S",), ("[A,A]",),
    ("[A,A]", 1), ("A", 0, 1), ("A", (4, 3)), ("A", 4, 3), ("A", "V"), ("V", "V"), ("A", 2),
    ("C",), ("C", "E"), ("A", [1, 0]), ("A", (1, 1)), ("A", 1, True), ("C", "C", "C"), ("V",),
    ("I",), ("I", "I"), ("M",), ("M", "M"),
]
# fmt: on


def _describe_pattern(name: str, pattern: tuple, hi: float) -> str:
    shapes = {
        "A": "A(3,4)",
        "B": "B(4,3)",
        "V": "v(4)",
        "C": "C(2,3,4)",
        "E": "E(2,4,3)",
        "S": "S(4,4) spd",
        "[A,A]": "[A, A]",
    }
    parts = [shapes.get(p, repr(p)) if isinstance(p, str) else repr(p) for p in pattern]
    dom = "" if hi < 1 else " on [1.2, 1.8)"
    if name.startswith("Tensor."):
        return f"{parts[0]}.{name[7:]}({', '.join(parts[1:])}){dom}"
    return f"{name.rsplit('.', 1)[-1]}({', '.join(parts)}){dom}"


def in_fx_graph(table: str, key: Any, c: Case, learn: tuple[bool, ...]) -> None:
    """Raise NotApplicable unless a plain ``torch.fx`` trace of the case holds the op itself
    (``torch.dsmm`` is recorded as ``torch.mm``, for example: that row is not this one's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gm = torch.fx.symbolic_trace(one_op_class(len(c.args))(c, learn))
    except Exception as exc:
        raise NotApplicable(f"the call does not trace: {type(exc).__name__}") from exc
    seen = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and table == "function" and n.target is key:
            return
        if n.op == "call_method" and table == "method" and n.target == key:
            return
        if n.op in ("call_function", "call_method") and n.target is not operator.mul:
            seen.append(n.target if isinstance(n.target, str) else op_name(n.target))
    raise NotApplicable(f"FX records the call as {', '.join(map(str, seen)) or 'nothing'}")


def probe(name: str, call: Callable, table: str, key: Any) -> tuple[Case | None, tuple | str]:
    """The first pattern (and value range) for which ``call`` works; else the likeliest reason."""
    reasons = []
    for pattern in PATTERNS:
        args, rebuild = _pattern_args(pattern)
        for lo, hi in ((0.2, 0.8), (1.2, 1.8)):
            shifted = tuple(Arg(a.shape, a.kind, lo, hi) if a.kind == "float" else a for a in args)
            c = Case(
                lambda *ts, rebuild=rebuild: call(*rebuild(list(ts))),
                shifted,
                _describe_pattern(name, pattern, hi),
            )
            try:
                learn = eager_check(c)
                in_fx_graph(table, key, c, learn)
                return c, learn
            except NotApplicable as exc:
                reasons.append(str(exc))
                if str(exc).startswith("eager call fails"):
                    break  # a signature mismatch does not depend on the values
    for why in reasons:
        if not why.startswith("eager call fails"):
            return None, why
    return None, REASON_NO_PATTERN
