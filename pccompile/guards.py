"""Guards: what a captured plan assumed about the model, checked before every forward/learn.

A plan is a trace: it bakes in the model as it was when it was captured. Training loops change
models (freeze a layer, swap the head, anneal a temperature, call ``eval()`` on the original,
cast to float64, register a hook), and a plan that kept running after such a change would give
numbers that are not BP's, without an error. As ``torch.compile`` does for a frame, a
:class:`Guards` records at capture everything the plan depends on and compares it with the
model before each use; :class:`PlanCache` keeps one plan per state it has seen (a model toggled
between ``train()`` and ``eval()`` captures twice, then only checks), captures again when no
entry's guards hold, logs the guard that failed, and refuses with
:class:`~pccompile.errors.RecaptureLimitError` beyond :data:`recapture_limit` captures (a value
that changes every step needs a tensor or a leaf, not a capture per step).

Reads: the user's module: per submodule its class (a parametrization swaps it), training flag,
the identity of its children, parameters and buffers, each parameter's ``requires_grad``,
each tensor's dtype and device (by ``get_device()``), the keys of its forward/backward hooks
(and the global module hooks); and the plain Python attributes the capture read (recorded by
:func:`recording`: a temperature, a flag, ``DropPath.drop_prob``).
Writes: nothing on the model; a log line (logger ``pccompile.guards``, INFO) per capture again.
Invariants: a plan is used only while every guard recorded at its capture holds. Guards hold
references to the objects they check by identity (an id is never reused while guarded). The
check is one generated expression of attribute loads and ``is`` comparisons, no graph walk.
Inside ``torch.export``/``torch.compile`` tracing the PCModule itself (ONNX export) the check is
skipped: the tracer swaps parameters for fake tensors, and the most recent plan runs.
Not guarded: attributes of objects that are not modules (a config object read in forward),
the contents of dicts and other containers on a module (identity only; lists and tuples of
scalars are compared by value), global Python variables, and tensor *values* (a buffer's
contents are read live by the plan).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules import module as _module_globals

from .errors import RecaptureLimitError

__all__ = ["Guards", "PlanCache", "recording", "recapture_limit"]

log = logging.getLogger(__name__)

#: Captures one PCModule may make (the one at convert included) before it refuses; like
#: ``torch._dynamo.config.recompile_limit``. Raise it for a loop with more distinct states.
recapture_limit = 8

# nn.Module's own instance attributes: the guard reads them structurally, not as values.
_INTERNALS = frozenset(vars(nn.Module())) | {"training"}
_SCALARS = (int, float, bool, str, type(None), complex, torch.dtype, torch.device)
_MISSING = object()


def _value(v: Any) -> Any:
    """What a guard on an attribute compares: the value of a scalar (or a tuple/list of
    scalars), the identity of anything else (a function, a tensor kept as a plain attribute)."""
    if type(v) in _SCALARS:
        return v
    if type(v) in (tuple, list) and all(type(x) in _SCALARS for x in v):
        return (type(v), *v)
    return ("id", id(v))


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[dict[tuple[int, str], tuple[nn.Module, str]]]:
    """Record the instance attributes of ``model``'s submodules read inside the block (the
    Python values a trace bakes in). Yields ``{(id(module), name): (module, name)}``.

    ``nn.Module`` defines no ``__getattribute__``; for the block it gets one that notes reads of
    names in the instance ``__dict__`` (not nn.Module's own bookkeeping, not parameters,
    buffers or children, which live in their own dicts and are guarded structurally)."""
    watched = {id(m) for m in model.modules()}
    reads: dict[tuple[int, str], tuple[nn.Module, str]] = {}
    get = object.__getattribute__

    def getattribute(self: nn.Module, name: str) -> Any:
        if name not in _INTERNALS and id(self) in watched and name in get(self, "__dict__"):
            reads.setdefault((id(self), name), (self, name))
        return get(self, name)

    had = "__getattribute__" in vars(nn.Module)
    previous = vars(nn.Module).get("__getattribute__")
    nn.Module.__getattribute__ = getattribute
    try:
        yield reads
    finally:
        if had:
            nn.Module.__getattribute__ = previous
        else:
            del nn.Module.__getattribute__


class Guards:
    """The state of ``model`` one plan was captured for, and its check.

    As in dynamo, each guard is a Python expression over objects bound at capture (the
    modules' ``__dict__``, their parameter/buffer/children dicts, the expected objects and
    values), and :meth:`check` is all of them joined by ``and`` in one generated function: a
    few dozen attribute loads and ``is`` comparisons per module, short-circuiting at the first
    failure; :meth:`failure` evaluates them one by one to name it.

    Args:
        model: the user's module.
        reads: instance attributes the capture read (from :func:`recording`).
    """

    def __init__(self, model: nn.Module, reads: dict[tuple[int, str], tuple[nn.Module, str]]):
        named = list(model.named_modules())
        self.modules = [m for _, m in named]
        self.reads = list(reads.values())
        self.scope: dict[str, Any] = {"_M": _MISSING, "_value": _value}
        self.parts: list[tuple[str, str]] = []  # (expression, what it guards, in words)
        qual = {id(m): n for n, m in named}
        for i, (name, m) in enumerate(named):
            self._module(i, name or "<root>", m, root=m is model)
        for r, (m, attr) in enumerate(self.reads):
            self._attribute(r, f"{qual.get(id(m), '?')}.{attr}".lstrip("."), m, attr)
        g = _module_globals
        for k, hooks in enumerate(
            (
                g._global_forward_pre_hooks,
                g._global_forward_hooks,
                g._global_backward_pre_hooks,
                g._global_backward_hooks,
            )
        ):
            self._hooks(f"G{k}", hooks, "global module hooks (register_module_*_hook)")
        source = " and ".join(f"({e})" for e, _ in self.parts) or "True"
        self.check: Callable[[], bool] = eval(f"lambda: {source}", self.scope)  # noqa: S307
        self.check.__doc__ = "Whether the model is still in the state the plan was captured for."

    def _bind(self, name: str, obj: Any) -> str:
        self.scope[name] = obj
        return name

    def _hooks(self, var: str, hooks: dict, what: str) -> None:
        self._bind(var, hooks)
        if hooks:
            keys = self._bind(f"{var}k", tuple(hooks))
            self.parts.append((f"tuple({var}) == {keys}", what))
        else:
            self.parts.append((f"not {var}", what))

    def _module(self, i: int, name: str, m: nn.Module, root: bool) -> None:
        d = self._bind(f"d{i}", m.__dict__)
        add = self.parts.append
        add(
            (
                f"type(m{i}) is {self._bind(f'T{i}', type(m))}",
                f"class of {name!r} (a parametrization registered or removed)",
            )
        )
        self._bind(f"m{i}", m)
        add((f"{d}['training'] is {m.training}", f"training flag of {name!r} (was {m.training})"))
        for reg, kind in (
            ("_modules", "submodule"),
            ("_parameters", "parameter"),
            ("_buffers", "buffer"),
        ):
            entries = m.__dict__[reg]
            var = self._bind(f"r{reg[1]}{i}", entries)
            add(
                (
                    f"{d}[{reg!r}] is {var} and len({var}) == {len(entries)}",
                    f"{kind}s of {name!r} (one added or removed)",
                )
            )
            for key, obj in entries.items():
                where = f"{kind} {name}.{key}".replace("<root>.", "")
                if obj is None:
                    add((f"{var}[{key!r}] is None", f"{where} (was None)"))
                    continue
                o = self._bind(f"o{i}_{reg[1]}_{len(self.scope)}", obj)
                add((f"{var}[{key!r}] is {o}", f"{where} (replaced)"))
                if kind == "submodule":
                    continue
                if kind == "parameter":
                    add(
                        (
                            f"{o}.requires_grad is {obj.requires_grad}",
                            f"requires_grad of {where} (was {obj.requires_grad})",
                        )
                    )
                dt = self._bind(f"{o}dt", obj.dtype)
                add(
                    (
                        f"{o}.dtype is {dt} and {o}.get_device() == {obj.get_device()}",
                        f"dtype/device of {where} (was {obj.dtype}, {obj.device})",
                    )
                )
        hooks = [
            ("_backward_pre_hooks", "backward pre-hooks"),
            ("_backward_hooks", "backward hooks"),
        ]
        if not root:  # the root's own forward hooks run around the graph, never inside it
            hooks += [
                ("_forward_pre_hooks", "forward pre-hooks"),
                ("_forward_hooks", "forward hooks"),
            ]
        for k, (reg, what) in enumerate(hooks):
            self._hooks(f"h{i}_{k}", m.__dict__[reg], f"{what} of {name!r}")

    def _attribute(self, r: int, qual: str, m: nn.Module, attr: str) -> None:
        d = self._bind(f"a{r}", m.__dict__)
        current = m.__dict__.get(attr, _MISSING)
        v = _value(current)
        what = f"attribute {qual!r} read in forward (was {_show(current)})"
        if type(current) in _SCALARS and current == current:  # not NaN
            val = self._bind(f"v{r}", current)
            self.parts.append((f"{d}.get({attr!r}, _M) == {val}", what))
        elif isinstance(v, tuple) and v and v[0] == "id":
            val = self._bind(f"v{r}", current)
            self.parts.append((f"{d}.get({attr!r}, _M) is {val}", what))
        else:
            val = self._bind(f"v{r}", v)
            self.parts.append((f"_value({d}.get({attr!r}, _M)) == {val}", what))

    def failure(self) -> str:
        """The first guard that fails, in words (for the log line and errors)."""
        for expr, what in self.parts:
            if not eval(expr, self.scope):  # noqa: S307
                return what
        return "none"


def _show(v: Any) -> str:
    if v is _MISSING:
        return "not set"
    if type(v) in _SCALARS or (type(v) in (tuple, list) and len(v) < 8):
        return repr(v)
    return f"a {type(v).__name__}"


class PlanCache:
    """The plans of one PCModule, one per model state, most recently used first.

    Args:
        model: the user's module.
        build: ``inputs -> plan``, a capture of ``model`` as it is now.
    """

    def __init__(self, model: nn.Module, build: Callable[[tuple], Any]):
        self.model = model
        self.build = build
        self.entries: list[tuple[Guards, Any]] = []
        self.captures = 0  # captures made, the one at convert included
        self.last_failure = ""

    def get(self, inputs: tuple) -> Any:
        """The plan for the model's current state, captured from ``inputs`` if none fits."""
        entries = self.entries
        if entries and torch.compiler.is_compiling():
            # torch.export/torch.compile tracing the PCModule itself: they swap its parameters
            # for fake tensors (the identity guards would fail) and the state cannot change
            # during the trace; the plan of the state the trace started from runs
            return entries[0][1]
        if entries:
            guards, plan = entries[0]
            if guards.check():
                return plan
            for k in range(1, len(entries)):
                if entries[k][0].check():
                    entries.insert(0, entries.pop(k))
                    return entries[0][1]
            reason = entries[0][0].failure()
            self.last_failure = reason
            if self.captures >= recapture_limit:
                raise RecaptureLimitError(
                    f"The model changed again after {self.captures} captures (this time: "
                    f"{reason}). Each new state of the model needs a new capture, and "
                    f"pccompile.guards.recapture_limit = {recapture_limit} were made. A value "
                    f"that changes every step should be a tensor the forward reads "
                    f"(register_buffer, updated in place), or the module that reads it a leaf "
                    f"(convert(..., leaf_modules=[...])) so it runs live; otherwise raise "
                    f"pccompile.guards.recapture_limit."
                )
            log.info(
                "pccompile: capturing %s again (capture %d): guard failed: %s",
                type(self.model).__name__,
                self.captures + 1,
                reason,
            )
        return self.capture(inputs)

    def capture(self, inputs: tuple) -> Any:
        with recording(self.model) as reads:
            plan = self.build(inputs)
        self.entries.insert(0, (Guards(self.model, reads), plan))
        self.captures += 1
        return plan

    def clear(self) -> None:
        """Forget every plan (their tensors are no longer the model's: ``_apply``)."""
        self.entries.clear()

    @property
    def recaptures(self) -> int:
        """Captures made because a guard failed (the one at convert not counted)."""
        return max(self.captures - 1, 0)
