"""The pieces every case is made of: tensor arguments (:class:`Arg`), how to call one op
(:class:`Case`), the single-op model (:class:`OneOp`), the loss every output structure has
(:func:`weighted_sum`) and the eager-mode check a case must pass before it is used."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

D = torch.float64
Tensor = torch.Tensor


# ------------------------------------------------------------------------------ arguments
@dataclass(frozen=True)
class Arg:
    """A tensor argument. ``float`` tensors (values in [lo, hi)) are learnable through a scale
    parameter when the op has a gradient for them; ``spd`` is a well-conditioned symmetric
    positive definite matrix; ``index`` (long, distinct values in [0, high) along each row when
    the row is short enough), ``mask`` (bool) and ``sign`` (+-1 floats) are clamped inputs."""

    shape: tuple[int, ...]
    kind: str = "float"
    lo: float = 0.2
    hi: float = 0.8
    high: int = 0

    def make(self, k: int) -> Tensor:
        n = 1
        for s in self.shape:
            n *= s
        i = torch.arange(n, dtype=D)
        if self.kind == "index":
            return ((torch.arange(n) * 3 + 1 + k) % self.high).reshape(self.shape)
        if self.kind == "mask":
            return ((torch.arange(n) + k) % 3 == 0).reshape(self.shape)
        if self.kind == "sign":
            return torch.where((torch.arange(n) + k) % 2 == 0, 1.0, -1.0).to(D).reshape(self.shape)
        # A deterministic low-discrepancy sequence: no RNG (seeds stay the test's business), no
        # ties (sort, max and median have unique answers), values away from kinks at 0.
        v = (i * 0.6180339887 + 0.37 * k) % 1.0
        t = (self.lo + (self.hi - self.lo) * v).reshape(self.shape)
        if self.kind == "spd":
            t = t - 0.5
            return t @ t.T + self.shape[0] * torch.eye(self.shape[0], dtype=D)
        return t

    @property
    def learnable(self) -> bool:
        return self.kind in ("float", "spd")


def f(*shape: int, lo: float = 0.2, hi: float = 0.8) -> Arg:
    return Arg(shape, "float", lo, hi)


def ix(*shape: int, high: int) -> Arg:
    return Arg(shape, "index", high=high)


def mask(*shape: int) -> Arg:
    return Arg(shape, "mask")


def sign(*shape: int) -> Arg:
    return Arg(shape, "sign")


def spd(n: int) -> Arg:
    return Arg((n, n), "spd")


@dataclass(frozen=True)
class Case:
    """How to call one op: ``call(*tensors)`` (functions, methods) or ``call(module, *tensors)``
    with ``factory()`` building the module; ``note`` says how, for docs/ops.md."""

    call: Callable[..., Any]
    args: tuple[Arg, ...]
    note: str = ""
    factory: Callable[[], nn.Module] | None = None
    train: bool = True


def case(call: Callable, *args: Arg, note: str = "", train: bool = True) -> Case:
    return Case(call, args, note, train=train)


def mod(
    factory: Callable[[], nn.Module],
    *args: Arg,
    call: Callable | None = None,
    train: bool = True,
    note: str = "",
) -> Case:
    return Case(call or (lambda m, *ts: m(*ts)), args, note, factory, train)


# ------------------------------------------------------------------------------ the model
class OneOp(nn.Module):
    """``forward(*x) = call(x_1 * s_1, ...)``: one op, with a scale parameter (ones) on every
    argument the op differentiates, so every Jacobian of the op is exercised."""

    def __init__(self, c: Case, learn: tuple[bool, ...]):
        super().__init__()
        self.op = c.factory().to(D) if c.factory is not None else None
        self.scales = nn.ParameterList(
            [
                nn.Parameter(torch.ones(a.shape, dtype=D))
                for a, on in zip(c.args, learn, strict=True)
                if on
            ]
        )
        self.learn, self.call = learn, c.call
        self.train(c.train)

    def run(self, *xs: Tensor) -> Any:
        scales = iter(self.scales)
        ts = [x * next(scales) if on else x for x, on in zip(xs, self.learn, strict=True)]
        return self.call(*ts) if self.op is None else self.call(self.op, *ts)


@functools.cache
def one_op_class(arity: int) -> type[OneOp]:
    """OneOp with ``forward(self, x0, ..., x{arity-1})``: FX gives ``*args`` one placeholder."""
    names = ", ".join(f"x{i}" for i in range(arity))
    ns: dict = {}
    exec(f"def forward(self, {names}):\n    return self.run({names})\n", ns)
    return type(f"OneOp{arity}", (OneOp,), {"forward": ns["forward"]})


def weighted_sum(output: Any, target: Any = None) -> Tensor:
    """A loss any output structure has: fixed weights times every floating output, summed."""
    total = None
    for t in tree_flatten(output)[0]:
        if isinstance(t, Tensor) and t.is_floating_point():
            w = torch.sin(torch.arange(1, t.numel() + 1, dtype=D)).reshape(t.shape).to(t.dtype)
            term = (t * w).sum()
            total = term if total is None else total + term
    return total


def inputs_for(c: Case) -> tuple[Tensor, ...]:
    return tuple(a.make(k) for k, a in enumerate(c.args))


class NotApplicable(Exception):
    """A case that cannot be checked (the reason is its message)."""


def eager_check(c: Case) -> tuple[bool, ...]:
    """Run the case once in eager mode with warnings as errors; return which arguments get a
    gradient (those get a scale parameter). Raises NotApplicable with the reason otherwise."""
    xs = [
        x.clone().requires_grad_() if a.learnable else x
        for x, a in zip(inputs_for(c), c.args, strict=True)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            m = c.factory().to(D).train(c.train) if c.factory is not None else None
            torch.manual_seed(0)
            out = c.call(*xs) if m is None else c.call(m, *xs)
        except Exception as exc:
            raise NotApplicable(f"eager call fails: {type(exc).__name__}") from exc
        flat = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if not any(t.is_floating_point() for t in flat):
            raise NotApplicable("no floating-point output (integer/boolean results are constants)")
        loss = weighted_sum(out)
        if not loss.requires_grad:
            raise NotApplicable("the output has no gradient path (BP gets no gradient either)")
        if not torch.isfinite(loss):
            raise NotApplicable("non-finite output on the probe inputs")
        wrt = [x for x in xs if x.requires_grad]
        params = list(m.parameters()) if m is not None else []
        try:
            grads = torch.autograd.grad(loss, wrt + params, allow_unused=True)
        except Exception as exc:
            raise NotApplicable(f"no derivative: {type(exc).__name__}") from exc
    if not all(g is None or torch.isfinite(g).all() for g in grads):
        raise NotApplicable("non-finite gradient on the probe inputs")
    it = iter(grads)
    learn = tuple(x.requires_grad and next(it) is not None for x in xs)
    if not any(learn) and not any(g is not None for g in grads[len(wrt) :]):
        raise NotApplicable("no gradient reaches any argument or parameter")
    return learn


def op_name(fn: Callable) -> str:
    """The name an op has in docs/ops.md: ``module.name`` (``operator.add``, ``torch.conv2d``)."""
    if type(fn).__name__ == "method-wrapper":  # a Tensor property's getter (x.T, x.real ...)
        return f"Tensor.{getattr(fn.__self__, '__name__', '?')}.__get__"
    mod = getattr(fn, "__module__", None) or ""
    mod = {"_operator": "operator"}.get(mod, mod)
    return f"{mod}.{getattr(fn, '__name__', repr(fn))}"
