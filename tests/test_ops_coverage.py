"""Op coverage: every rule in :mod:`pccompile.ops` has a single-op model that is checked, or a
recorded reason why not.

The check (``check_case``): a model ``forward(*x) = op(x_1 * s_1, ..., x_k * s_k)`` whose scales
``s_i`` are parameters of ones (so there is something to learn even for ops without weights, and
every argument's Jacobian is exercised) is converted; its forward must equal the plain call and
one ``zil`` learn step must equal ``bp`` in float64 (``helpers.assert_matches_bp``: every
gradient, the buffers and the global RNG state afterwards). The loss is a fixed weighted sum of
every floating output, so tuple outputs (``max``, ``sort``, RNN states) need nothing special.

Cases come from, in order: ``MODULE_CASES`` (a constructor for every ``torch.nn`` class in the
registry, or a reason in ``MODULE_SKIPS``); ``FUNCTION_CASES`` (hand-written calls for ops that
need particular arguments: convolutions, norms, losses, indexing, linear algebra); and a probe
that tries the fixed ``PATTERNS`` on every other function and Tensor method in eager mode and
keeps the first one that gives a finite, differentiable floating output. Every case is run once
in eager mode with warnings as errors before it becomes a test, and the op must appear in the
converted graph, so a case never tests something other than its op. PyTorch's OpInfo database
is not used: it needs ``expecttest`` (not a dependency) and its import changes global torch
flags. ``tools/gen_ops_table.py`` writes docs/ops.md from the same catalogue.
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_bp
from torch.utils._pytree import tree_flatten

import pccompile
from pccompile import UnsupportedOpError, ops

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
def _one_op_class(arity: int) -> type[OneOp]:
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


# ------------------------------------------------------------------------------ hand-written
def _both(name: str, *args: Arg, **kw: Any) -> dict[str, Case]:
    """The same call as ``torch.NAME(*ts)`` and as the method ``ts[0].NAME(*ts[1:])``."""
    fn = getattr(torch, name)
    return {
        f"torch.{name}": case(lambda *ts: fn(*ts, **kw), *args, note=f"torch.{name}"),
        f"Tensor.{name}": case(lambda t, *ts: getattr(t, name)(*ts, **kw), *args),
    }


def _unpool(pool: Callable, unpool: Callable) -> Callable:
    def call(x: Tensor) -> Tensor:
        out = pool(x, 2, return_indices=True)  # indexed, not unpacked: FX proxies do not iterate
        return unpool(out[0], out[1], 2)

    return call


def _lu_solve(a: Tensor, b: Tensor) -> Tensor:
    lu = torch.linalg.lu_factor(a)
    return torch.linalg.lu_solve(lu[0], lu[1], b)


N4, N5 = f(2, 3, 6, 6), f(1, 2, 4, 4, 4)  # NCHW and NCDHW inputs
FUNCTION_CASES: dict[str, Case] = {
    # BLAS-like
    **_both("addmm", f(3, 5), f(3, 4), f(4, 5)),
    **_both("addbmm", f(3, 5), f(2, 3, 4), f(2, 4, 5)),
    **_both("baddbmm", f(2, 3, 5), f(2, 3, 4), f(2, 4, 5)),
    **_both("addmv", f(3), f(3, 4), f(4)),
    **_both("addr", f(3, 4), f(3), f(4)),
    "torch.matrix_power": case(lambda a: torch.matrix_power(a, 3), f(4, 4)),
    "Tensor.matrix_power": case(lambda a: a.matrix_power(3), f(4, 4)),
    "torch._C._linalg.linalg_matrix_power": case(
        lambda a: torch.linalg.matrix_power(a, 3), f(4, 4)
    ),
    "torch._C._linalg.linalg_solve": case(torch.linalg.solve, spd(4), f(4, 2)),
    "torch._C._linalg.linalg_solve_ex": case(torch.linalg.solve_ex, spd(4), f(4, 2)),
    "torch._C._linalg.linalg_solve_triangular": case(
        lambda a, b: torch.linalg.solve_triangular(a, b, upper=False), spd(4), f(4, 2)
    ),
    "torch._C._linalg.linalg_lu_solve": case(_lu_solve, spd(4), f(4, 2)),
    "torch.functional.einsum": case(lambda a, b: torch.einsum("ij,jk->ik", a, b), f(3, 4), f(4, 5)),
    "torch._C._linalg.linalg_cross": case(torch.linalg.cross, f(3, 3), f(3, 3)),
    "torch.cross": case(lambda a, b: torch.cross(a, b, dim=1), f(4, 3), f(4, 3)),
    "torch._C._linalg.linalg_multi_dot": case(
        lambda a, b, c: torch.linalg.multi_dot([a, b, c]), f(3, 4), f(4, 5), f(5, 2)
    ),
    "torch._C._linalg.linalg_tensorinv": case(
        lambda a: torch.linalg.tensorinv(a.reshape(4, 2, 2), ind=1), spd(4)
    ),
    "torch._C._linalg.linalg_tensorsolve": case(
        lambda a, b: torch.linalg.tensorsolve(a.reshape(2, 2, 4), b), spd(4), f(2, 2)
    ),
    "torch._C._linalg.linalg_householder_product": case(
        torch.linalg.householder_product, f(4, 3), f(3)
    ),
    **_both("orgqr", f(4, 3), f(3)),
    **_both("ormqr", f(4, 3), f(3), f(4, 2)),
    **_both("cholesky_solve", f(4, 2), spd(4)),
    # indexing and scattering
    "torch.gather": case(lambda a, i: torch.gather(a, 1, i), f(3, 4), ix(3, 2, high=4)),
    "Tensor.gather": case(lambda a, i: a.gather(1, i), f(3, 4), ix(3, 2, high=4)),
    "torch.index_select": case(lambda a, i: torch.index_select(a, 1, i), f(3, 4), ix(2, high=4)),
    "Tensor.index_select": case(lambda a, i: a.index_select(1, i), f(3, 4), ix(2, high=4)),
    "torch.index_add": case(
        lambda a, i, s: torch.index_add(a, 1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "Tensor.index_add": case(lambda a, i, s: a.index_add(1, i, s), f(3, 4), ix(2, high=4), f(3, 2)),
    "torch.index_copy": case(
        lambda a, i, s: torch.index_copy(a, 1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "Tensor.index_copy": case(
        lambda a, i, s: a.index_copy(1, i, s), f(3, 4), ix(2, high=4), f(3, 2)
    ),
    "torch.index_fill": case(lambda a, i: torch.index_fill(a, 1, i, 0.5), f(3, 4), ix(2, high=4)),
    "Tensor.index_fill": case(lambda a, i: a.index_fill(1, i, 0.5), f(3, 4), ix(2, high=4)),
    "torch.index_put": case(
        lambda a, i, v: torch.index_put(a, (i,), v), f(3, 4), ix(2, high=3), f(2, 4)
    ),
    "Tensor.index_put": case(lambda a, i, v: a.index_put((i,), v), f(3, 4), ix(2, high=3), f(2, 4)),
    "torch.masked_fill": case(lambda a, m: torch.masked_fill(a, m, 0.5), f(3, 4), mask(3, 4)),
    "Tensor.masked_fill": case(lambda a, m: a.masked_fill(m, 0.5), f(3, 4), mask(3, 4)),
    "torch.masked_scatter": case(torch.masked_scatter, f(3, 4), mask(3, 4), f(3, 4)),
    "Tensor.masked_scatter": case(
        lambda a, m, s: a.masked_scatter(m, s), f(3, 4), mask(3, 4), f(3, 4)
    ),
    "torch.masked_select": case(torch.masked_select, f(3, 4), mask(3, 4)),
    "Tensor.masked_select": case(lambda a, m: a.masked_select(m), f(3, 4), mask(3, 4)),
    "torch.scatter": case(
        lambda a, i, s: torch.scatter(a, 1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter": case(lambda a, i, s: a.scatter(1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)),
    "torch.scatter_add": case(
        lambda a, i, s: torch.scatter_add(a, 1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter_add": case(
        lambda a, i, s: a.scatter_add(1, i, s), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "torch.scatter_reduce": case(
        lambda a, i, s: torch.scatter_reduce(a, 1, i, s, "sum"), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "Tensor.scatter_reduce": case(
        lambda a, i, s: a.scatter_reduce(1, i, s, "sum"), f(3, 4), ix(3, 2, high=4), f(3, 2)
    ),
    "torch.take": case(torch.take, f(3, 4), ix(5, high=12)),
    "Tensor.take": case(lambda a, i: a.take(i), f(3, 4), ix(5, high=12)),
    "torch.take_along_dim": case(
        lambda a, i: torch.take_along_dim(a, i, 1), f(3, 4), ix(3, 2, high=4)
    ),
    "Tensor.take_along_dim": case(lambda a, i: a.take_along_dim(i, 1), f(3, 4), ix(3, 2, high=4)),
    "torch.put": case(torch.put, f(3, 4), ix(3, high=12), f(3)),
    "Tensor.put": case(lambda a, i, s: a.put(i, s), f(3, 4), ix(3, high=12), f(3)),
    "torch.select_scatter": case(lambda a, s: torch.select_scatter(a, s, 0, 1), f(3, 4), f(4)),
    "Tensor.select_scatter": case(lambda a, s: a.select_scatter(s, 0, 1), f(3, 4), f(4)),
    "torch.diagonal_scatter": case(torch.diagonal_scatter, f(4, 4), f(4)),
    "Tensor.diagonal_scatter": case(lambda a, s: a.diagonal_scatter(s), f(4, 4), f(4)),
    "torch.as_strided_scatter": case(
        lambda a, s: torch.as_strided_scatter(a, s, (2, 2), (1, 2)), f(3, 4), f(2, 2)
    ),
    "Tensor.as_strided_scatter": case(
        lambda a, s: a.as_strided_scatter(s, (2, 2), (1, 2)), f(3, 4), f(2, 2)
    ),
    "torch.as_strided_copy": case(lambda a: torch.as_strided_copy(a, (2, 2), (1, 2)), f(3, 4)),
    "Tensor.as_strided": case(lambda a: a.as_strided((2, 2), (1, 2)), f(3, 4)),
    "torch.where": case(torch.where, mask(3, 4), f(3, 4), f(3, 4)),
    "Tensor.where": case(lambda a, m, b: a.where(m, b), f(3, 4), mask(3, 4), f(3, 4)),
    # shapes
    "torch.narrow": case(lambda a: torch.narrow(a, 1, 1, 2), f(3, 4)),
    "Tensor.narrow": case(lambda a: a.narrow(1, 1, 2), f(3, 4)),
    "torch.narrow_copy": case(lambda a: torch.narrow_copy(a, 1, 1, 2), f(3, 4)),
    "Tensor.narrow_copy": case(lambda a: a.narrow_copy(1, 1, 2), f(3, 4)),
    "Tensor.expand": case(lambda a: a.expand(2, 3, 4), f(3, 4)),
    "torch.expand_copy": case(lambda a: torch.expand_copy(a, (2, 3, 4)), f(3, 4)),
    "torch.broadcast_to": case(lambda a: torch.broadcast_to(a, (2, 3, 4)), f(3, 4)),
    "Tensor.broadcast_to": case(lambda a: a.broadcast_to((2, 3, 4)), f(3, 4)),
    "torch.unflatten": case(lambda a: torch.unflatten(a, 1, (2, 2)), f(3, 4)),
    "torch.split_with_sizes": case(lambda a: torch.split_with_sizes(a, [1, 3], 1), f(3, 4)),
    "Tensor.split_with_sizes": case(lambda a: a.split_with_sizes([1, 3], 1), f(3, 4)),
    "torch.split_with_sizes_copy": case(
        lambda a: torch.split_with_sizes_copy(a, [1, 3], 1), f(3, 4)
    ),
    "torch.unsafe_split_with_sizes": case(
        lambda a: torch.unsafe_split_with_sizes(a, [1, 3], 1), f(3, 4)
    ),
    "Tensor.unsafe_split_with_sizes": case(lambda a: a.unsafe_split_with_sizes([1, 3], 1), f(3, 4)),
    "torch.dsplit": case(lambda a: torch.dsplit(a, 2), f(2, 3, 4)),
    "Tensor.dsplit": case(lambda a: a.dsplit(2), f(2, 3, 4)),
    "Tensor.unfold": case(lambda a: a.unfold(1, 2, 1), f(3, 4)),
    "torch.unfold_copy": case(lambda a: torch.unfold_copy(a, 1, 2, 1), f(3, 4)),
    "torch.renorm": case(lambda a: torch.renorm(a, 2, 0, 0.5), f(3, 4)),
    "Tensor.renorm": case(lambda a: a.renorm(2, 0, 0.5), f(3, 4)),
    "Tensor.new_full": case(lambda a: a + a.new_full((3, 4), 0.5), f(3, 4)),
    "builtins.getattr": case(lambda a: a.T, f(3, 4), note="x.T"),
    "torch.polygamma": case(lambda a: torch.polygamma(1, a), f(3, 4)),
    "torch._C._special.special_polygamma": case(lambda a: torch.special.polygamma(1, a), f(3, 4)),
    "torch.detach": case(lambda a: a * torch.detach(a), f(3, 4)),
    "Tensor.detach": case(lambda a: a * a.detach(), f(3, 4)),
    # convolutions and linear layers
    "torch.conv1d": case(
        lambda x, w, b: torch.conv1d(x, w, b, padding=1), f(2, 3, 8), f(4, 3, 3), f(4)
    ),
    "torch.conv2d": case(
        lambda x, w, b: torch.conv2d(x, w, b, stride=2, padding=1), N4, f(4, 3, 3, 3), f(4)
    ),
    "torch.conv3d": case(
        lambda x, w, b: torch.conv3d(x, w, b, padding=1), N5, f(3, 2, 3, 3, 3), f(3)
    ),
    "torch.conv_transpose1d": case(
        lambda x, w, b: torch.conv_transpose1d(x, w, b, stride=2), f(2, 3, 5), f(3, 4, 3), f(4)
    ),
    "torch.conv_transpose2d": case(
        lambda x, w, b: torch.conv_transpose2d(x, w, b, stride=2),
        f(2, 3, 4, 4),
        f(3, 4, 3, 3),
        f(4),
    ),
    "torch.conv_transpose3d": case(
        lambda x, w, b: torch.conv_transpose3d(x, w, b), f(1, 2, 3, 3, 3), f(2, 3, 2, 2, 2), f(3)
    ),
    "torch.convolution": case(
        lambda x, w, b: torch.convolution(x, w, b, [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
        N4,
        f(4, 3, 3, 3),
        f(4),
    ),
    "torch.conv_tbc": case(
        lambda x, w, b: torch.conv_tbc(x, w, b, 1), f(5, 2, 3), f(3, 3, 4), f(4)
    ),
    "torch.bilinear": case(torch.bilinear, f(3, 4), f(3, 5), f(6, 4, 5), f(6)),
    "torch._C._nn.linear": case(F.linear, f(3, 4), f(5, 4), f(5)),
    # normalisation
    "torch.batch_norm": case(
        lambda x, w, b: torch.batch_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
        f(4, 3),
        f(3),
        f(3),
    ),
    "torch.nn.functional.batch_norm": case(
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), f(4, 3), f(3), f(3)
    ),
    "torch.native_batch_norm": case(
        lambda x, w, b: torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5),
        f(4, 3),
        f(3),
        f(3),
    ),
    "torch.instance_norm": case(
        lambda x, w, b: torch.instance_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
        f(2, 3, 5),
        f(3),
        f(3),
    ),
    "torch.layer_norm": case(lambda x, w, b: torch.layer_norm(x, [4], w, b), f(3, 4), f(4), f(4)),
    "torch.nn.functional.layer_norm": case(
        lambda x, w, b: F.layer_norm(x, (4,), w, b), f(3, 4), f(4), f(4)
    ),
    "torch.native_layer_norm": case(
        lambda x, w, b: torch.native_layer_norm(x, [4], w, b, 1e-5), f(3, 4), f(4), f(4)
    ),
    "torch.rms_norm": case(lambda x, w: torch.rms_norm(x, [4], w), f(3, 4), f(4)),
    "torch.nn.functional.rms_norm": case(lambda x, w: F.rms_norm(x, (4,), w), f(3, 4), f(4)),
    "torch.nn.functional.group_norm": case(
        lambda x, w, b: F.group_norm(x, 2, w, b), f(2, 4, 3), f(4), f(4)
    ),
    "torch.group_norm": case(lambda x, w, b: torch.group_norm(x, 2, w, b), f(2, 4, 3), f(4), f(4)),
    "torch.native_group_norm": case(
        lambda x, w, b: torch.native_group_norm(x, w, b, 2, 4, 3, 2, 1e-5), f(2, 4, 3), f(4), f(4)
    ),
    "torch.nn.functional.local_response_norm": case(
        lambda x: F.local_response_norm(x, 2), f(2, 4, 3, 3)
    ),
    # embeddings
    "torch.embedding": case(torch.embedding, f(10, 3), ix(2, 4, high=10)),
    "torch.nn.functional.embedding": case(F.embedding, ix(2, 4, high=10), f(10, 3)),
    "torch.nn.functional.embedding_bag": case(
        lambda i, w: F.embedding_bag(i, w, mode="mean"), ix(2, 3, high=10), f(10, 3)
    ),
    # pooling, resampling, padding
    "torch.max_pool2d": case(lambda x: torch.max_pool2d(x, 2), N4),
    "torch.max_pool3d": case(lambda x: torch.max_pool3d(x, 2), N5),
    "torch.nn.functional.max_pool2d": case(lambda x: F.max_pool2d(x, 2), N4),
    "torch.nn.functional.max_pool3d": case(lambda x: F.max_pool3d(x, 2), N5),
    "torch.nn.functional.max_pool2d_with_indices": case(
        lambda x: F.max_pool2d(x, 2, return_indices=True), N4
    ),
    "torch.nn.functional.max_pool3d_with_indices": case(
        lambda x: F.max_pool3d(x, 2, return_indices=True), N5
    ),
    "torch._C._nn.avg_pool2d": case(lambda x: F.avg_pool2d(x, 2), N4),
    "torch._C._nn.avg_pool3d": case(lambda x: F.avg_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_avg_pool3d": case(lambda x: F.adaptive_avg_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_max_pool2d": case(lambda x: F.adaptive_max_pool2d(x, 3), N4),
    "torch.nn.functional.adaptive_max_pool3d": case(lambda x: F.adaptive_max_pool3d(x, 2), N5),
    "torch.nn.functional.adaptive_max_pool2d_with_indices": case(
        lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True), N4
    ),
    "torch.nn.functional.adaptive_max_pool3d_with_indices": case(
        lambda x: F.adaptive_max_pool3d(x, 2, return_indices=True), N5
    ),
    "torch.nn.functional.lp_pool2d": case(lambda x: F.lp_pool2d(x, 2.0, 2), N4),
    "torch.nn.functional.lp_pool3d": case(lambda x: F.lp_pool3d(x, 2.0, 2), N5),
    "torch.nn.functional.fractional_max_pool2d": case(
        lambda x: F.fractional_max_pool2d(x, 2, output_size=3), f(1, 2, 6, 6)
    ),
    "torch.nn.functional.fractional_max_pool2d_with_indices": case(
        lambda x: F.fractional_max_pool2d(x, 2, output_size=3, return_indices=True), f(1, 2, 6, 6)
    ),
    "torch.nn.functional.fractional_max_pool3d": case(
        lambda x: F.fractional_max_pool3d(x, 2, output_size=2), f(1, 2, 5, 5, 5)
    ),
    "torch.nn.functional.fractional_max_pool3d_with_indices": case(
        lambda x: F.fractional_max_pool3d(x, 2, output_size=2, return_indices=True),
        f(1, 2, 5, 5, 5),
    ),
    "torch.nn.functional.max_unpool1d": case(_unpool(F.max_pool1d, F.max_unpool1d), f(2, 3, 6)),
    "torch.nn.functional.max_unpool2d": case(_unpool(F.max_pool2d, F.max_unpool2d), N4),
    "torch.nn.functional.max_unpool3d": case(_unpool(F.max_pool3d, F.max_unpool3d), N5),
    "torch.nn.functional.interpolate": case(
        lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), N4
    ),
    "torch.nn.functional.grid_sample": case(
        lambda x, g: F.grid_sample(x, g, align_corners=False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler": case(
        lambda x, g: torch.grid_sampler(x, g, 0, 0, False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler_2d": case(
        lambda x, g: torch.grid_sampler_2d(x, g, 0, 0, False),
        f(1, 2, 4, 4),
        f(1, 3, 3, 2, lo=-0.8, hi=0.8),
    ),
    "torch.grid_sampler_3d": case(
        lambda x, g: torch.grid_sampler_3d(x, g, 0, 0, False),
        f(1, 2, 3, 3, 3),
        f(1, 2, 2, 2, 3, lo=-0.8, hi=0.8),
    ),
    "torch.nn.functional.affine_grid": case(
        lambda t: F.affine_grid(t, [1, 2, 4, 4], align_corners=False), f(1, 2, 3)
    ),
    "torch.affine_grid_generator": case(
        lambda t: torch.affine_grid_generator(t, [1, 2, 4, 4], False), f(1, 2, 3)
    ),
    "torch.nn.functional.unfold": case(lambda x: F.unfold(x, 2), f(1, 2, 4, 4)),
    "torch.nn.functional.fold": case(lambda x: F.fold(x, (4, 4), 2), f(1, 8, 9)),
    "torch.pixel_shuffle": case(lambda x: torch.pixel_shuffle(x, 2), f(1, 4, 2, 2)),
    "torch.pixel_unshuffle": case(lambda x: torch.pixel_unshuffle(x, 2), f(1, 1, 4, 4)),
    "torch.channel_shuffle": case(lambda x: torch.channel_shuffle(x, 2), f(1, 4, 2, 2)),
    "torch.native_channel_shuffle": case(
        lambda x: torch.native_channel_shuffle(x, 2), f(1, 4, 2, 2)
    ),
    "torch.nn.functional.dropout2d": case(lambda x: F.dropout2d(x, 0.5), f(2, 3, 4, 4)),
    "torch.nn.functional.dropout3d": case(lambda x: F.dropout3d(x, 0.5), f(2, 3, 2, 2, 2)),
    # attention and recurrent cells
    "torch.nn.functional.multi_head_attention_forward": case(
        lambda q, wi, bi, wo, bo: F.multi_head_attention_forward(
            q, q, q, 4, 2, wi, bi, None, None, False, 0.0, wo, bo, need_weights=False
        )[0],
        f(3, 2, 4),
        f(12, 4),
        f(12),
        f(4, 4),
        f(4),
    ),
    "torch.lstm_cell": case(
        lambda x, h, c, wi, wh, bi, bh: torch.lstm_cell(x, (h, c), wi, wh, bi, bh),
        f(3, 4),
        f(3, 5),
        f(3, 5),
        f(20, 4),
        f(20, 5),
        f(20),
        f(20),
    ),
    "torch.gru_cell": case(torch.gru_cell, f(3, 4), f(3, 5), f(15, 4), f(15, 5), f(15), f(15)),
    "torch.rnn_tanh_cell": case(
        torch.rnn_tanh_cell, f(3, 4), f(3, 5), f(5, 4), f(5, 5), f(5), f(5)
    ),
    "torch.rnn_relu_cell": case(
        torch.rnn_relu_cell, f(3, 4), f(3, 5), f(5, 4), f(5, 5), f(5), f(5)
    ),
    "torch.lstm": case(
        lambda x, h, c, wi, wh, bi, bh: torch.lstm(
            x, (h, c), (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(1, 3, 5),
        f(20, 4),
        f(20, 5),
        f(20),
        f(20),
    ),
    "torch.gru": case(
        lambda x, h, wi, wh, bi, bh: torch.gru(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(15, 4),
        f(15, 5),
        f(15),
        f(15),
    ),
    "torch.rnn_tanh": case(
        lambda x, h, wi, wh, bi, bh: torch.rnn_tanh(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(5, 4),
        f(5, 5),
        f(5),
        f(5),
    ),
    "torch.rnn_relu": case(
        lambda x, h, wi, wh, bi, bh: torch.rnn_relu(
            x, h, (wi, wh, bi, bh), True, 1, 0.0, True, False, False
        ),
        f(4, 3, 4),
        f(1, 3, 5),
        f(5, 4),
        f(5, 5),
        f(5),
        f(5),
    ),
    # losses used inside a model
    "torch.nn.functional.nll_loss": case(F.nll_loss, f(3, 4), ix(3, high=4)),
    "torch.nn.functional.kl_div": case(
        lambda a, b: F.kl_div(a, b, reduction="batchmean"), f(3, 4), f(3, 4)
    ),
    "torch.nn.functional.multi_margin_loss": case(F.multi_margin_loss, f(3, 4), ix(3, high=4)),
    "torch.nn.functional.multilabel_margin_loss": case(
        F.multilabel_margin_loss, f(3, 4), ix(3, 4, high=4)
    ),
    "torch.nn.functional.soft_margin_loss": case(F.soft_margin_loss, f(3, 4), sign(3, 4)),
    "torch.nn.functional.cosine_embedding_loss": case(
        F.cosine_embedding_loss, f(3, 4), f(3, 4), sign(3)
    ),
    "torch.cosine_embedding_loss": case(torch.cosine_embedding_loss, f(3, 4), f(3, 4), sign(3)),
    "torch.poisson_nll_loss": case(
        lambda a, b: torch.poisson_nll_loss(a, b, True, False, 1e-8, 1), f(3, 4), f(3, 4)
    ),
    "torch.nn.functional.ctc_loss": case(
        lambda lp, t: F.ctc_loss(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
        f(5, 2, 4),
        ix(2, 3, high=3),
    ),
    "torch.ctc_loss": case(
        lambda lp, t: torch.ctc_loss(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
        f(5, 2, 4),
        ix(2, 3, high=3),
    ),
    "torch.nn.functional.linear_cross_entropy": case(
        F.linear_cross_entropy, f(3, 4), f(5, 4), ix(3, high=5)
    ),
}

# Why the rest of the registry has no check (op names; ``*`` ends a prefix; first match wins).
FUNCTION_SKIPS: list[tuple[str, str]] = [
    ("torch.sym_*", "SymInt/SymFloat arithmetic for symbolic shapes: no tensor values"),
    ("torch._sym_*", "SymInt/SymFloat arithmetic for symbolic shapes: no tensor values"),
    ("torch.amp.autocast_mode.autocast", "a context manager, not a tensor op"),
    ("torch.fbgemm_*", "FBGEMM quantized kernels: no float gradient"),
    ("torch.miopen_*", "MIOpen (AMD GPU) kernels: not on CPU"),
    ("torch.quantize*", "produces quantized tensors"),
    ("torch.quantized_*", "operates on quantized tensors"),
    ("torch.q_*", "operates on quantized tensors"),
    ("Tensor.q_*", "operates on quantized tensors"),
    ("torch.fake_quantize*", "quantization-aware-training kernel"),
    ("torch.fused_moving_avg*", "quantization-aware-training kernel"),
    ("torch.choose_qparams*", "quantization parameters"),
    ("torch.batch_norm_*", "BatchNorm backward/statistics kernels (internal pieces of batch_norm)"),
    ("torch.native_norm", "internal kernel of torch.norm"),
    ("Tensor.cuda", "moves to CUDA"),
    ("Tensor.xpu", "moves to an XPU"),
    ("Tensor.ipu", "moves to an IPU"),
    ("Tensor.mtia", "moves to an MTIA device"),
    ("Tensor.pin_memory", "needs an accelerator"),
    ("Tensor.record_stream", "CUDA streams"),
    ("Tensor.to_mkldnn", "MKL-DNN layout"),
    ("Tensor.to_sparse", "sparse layout"),
    ("Tensor.sparse_mask", "sparse layout"),
    ("Tensor.smm", "sparse layout"),
    ("torch.smm", "sparse layout"),
    ("torch.hsmm", "sparse layout"),
    ("torch.saddmm", "sparse layout"),
    ("Tensor.sspaddmm", "sparse layout"),
    ("Tensor.coalesce", "sparse layout"),
    ("Tensor.is_coalesced", "sparse layout"),
    ("Tensor.indices", "sparse layout"),
    ("Tensor.values", "sparse layout"),
    ("torch.indices_copy", "sparse layout"),
    ("torch.values_copy", "sparse layout"),
    ("Tensor.crow_indices", "sparse layout"),
    ("Tensor.ccol_indices", "sparse layout"),
    ("Tensor.col_indices", "sparse layout"),
    ("Tensor.row_indices", "sparse layout"),
    ("torch.crow_indices_copy", "sparse layout"),
    ("torch.ccol_indices_copy", "sparse layout"),
    ("torch.col_indices_copy", "sparse layout"),
    ("torch.row_indices_copy", "sparse layout"),
    ("torch.view_as_complex*", "complex outputs (the loss is over real floating outputs)"),
    ("torch.view_as_real*", "needs complex inputs"),
    ("Tensor.storage*", "storage objects, not tensors"),
    ("Tensor.untyped_storage", "storage objects, not tensors"),
    ("Tensor.module_load", "a state_dict loading hook"),
    ("Tensor.register_post_accumulate_grad_hook", "an autograd hook"),
    ("torch.lu_solve", "deprecated (warns); torch.linalg.lu_solve is tested"),
    ("Tensor.lu_solve", "deprecated (warns); torch.linalg.lu_solve is tested"),
    ("torch.triangular_solve", "deprecated (warns); torch.linalg.solve_triangular is tested"),
    ("Tensor.triangular_solve", "deprecated (warns); torch.linalg.solve_triangular is tested"),
    ("torch.functional.stft", "complex outputs (the loss is over real floating outputs)"),
    ("Tensor.stft", "complex outputs (the loss is over real floating outputs)"),
    ("torch.istft", "needs complex inputs"),
    ("Tensor.istft", "needs complex inputs"),
    ("torch.imag", "needs complex inputs"),
    ("Tensor.int_repr", "operates on quantized tensors"),
    ("torch.int_repr", "operates on quantized tensors"),
    ("Tensor.qscheme", "operates on quantized tensors"),
    ("Tensor.item", "returns a Python number (a constant of the pass)"),
    ("Tensor.resize", "deprecated (warns); use reshape"),
    ("torch.index_reduce", "beta API: warns once per process"),
    ("Tensor.index_reduce", "beta API: warns once per process"),
]
REASON_NO_PATTERN = "needs arguments none of the probe patterns give (no hand-written case)"
REASON_PRIVATE = "private torch function (underscore name)"
REASON_GETTER = "Tensor attribute getter; FX records attribute reads as builtins.getattr"


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


def _in_fx_graph(table: str, key: Any, c: Case, learn: tuple[bool, ...]) -> None:
    """Raise NotApplicable unless a plain ``torch.fx`` trace of the case holds the op itself
    (``torch.dsmm`` is recorded as ``torch.mm``, for example: that row is not this one's)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gm = torch.fx.symbolic_trace(_one_op_class(len(c.args))(c, learn))
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


def _probe(name: str, call: Callable, table: str, key: Any) -> tuple[Case | None, tuple | str]:
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
                _in_fx_graph(table, key, c, learn)
                return c, learn
            except NotApplicable as exc:
                reasons.append(str(exc))
                if str(exc).startswith("eager call fails"):
                    break  # a signature mismatch does not depend on the values
    for why in reasons:
        if not why.startswith("eager call fails"):
            return None, why
    return None, REASON_NO_PATTERN


# ------------------------------------------------------------------------------ the catalogue
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


def op_name(fn: Callable) -> str:
    if type(fn).__name__ == "method-wrapper":  # a Tensor property's getter (x.T, x.real ...)
        return f"Tensor.{getattr(fn.__self__, '__name__', '?')}.__get__"
    mod = getattr(fn, "__module__", None) or ""
    mod = {"_operator": "operator"}.get(mod, mod)
    return f"{mod}.{getattr(fn, '__name__', repr(fn))}"


def _method_call(name: str) -> Callable:
    return lambda t, *rest: getattr(t, name)(*rest)


def _skip_reason(name: str) -> str | None:
    for pattern, why in FUNCTION_SKIPS:
        if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return why
    return None


def _entry_for(table: str, name: str, key: Any, rule: ops.OpRule, call: Callable | None) -> Entry:
    e = Entry(table, name, key, rule.kind)
    hand = FUNCTION_CASES.get(name) if table != "module" else MODULE_CASES.get(key)
    if hand is not None:
        e.case, e.source = hand, "hand-written" if table != "module" else "module table"
        try:
            e.learn = eager_check(hand)
            if table != "module":
                _in_fx_graph(table, key, hand, e.learn)
        except NotApplicable as exc:
            e.case, e.reason = None, str(exc)
        return e
    if table == "module":
        e.reason = MODULE_SKIPS.get(key, "no constructor in MODULE_CASES")
        return e
    why = _skip_reason(name)
    if why is None and name.endswith(".__get__"):
        why = REASON_GETTER
    short = name.rsplit(".", 1)[-1]
    if why is None and short.startswith("_") and not short.startswith("__"):
        why = REASON_PRIVATE
    if why is None and short.startswith("__"):
        why = (
            "Tensor dunder method; FX records x.__op__(y) as the operator function (see the "
            "operator.* rows)"
        )
        if short not in _DUNDER_AS_OPERATOR:
            why = "Tensor dunder method (Python protocol / pickling), not a traced tensor op"
        if short in _INPLACE_DUNDERS:
            why = (
                "in-place dunder: capture rewrites x.__iop__(y) to its out-of-place operator "
                "(x.__setitem__ is refused); tested in test_fixes.py"
            )
    if why is not None:
        e.reason = why
        return e
    c, got = _probe(name, call, table, key)
    if c is None:
        e.reason = got
    else:
        e.case, e.learn, e.source = c, got, "probe"
    return e


# FX's Proxy defines these magic methods, so ``x.__add__(y)`` is recorded as ``operator.add``.
_DUNDER_AS_OPERATOR = {
    f"__{n}__"
    for n in (
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "div",
        "mod",
        "pow",
        "lshift",
        "rshift",
        "and",
        "or",
        "xor",
        "matmul",
        "getitem",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "invert",
        "neg",
        "pos",
        "abs",
    )
} | {
    f"__r{n}__"
    for n in (
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "div",
        "mod",
        "pow",
        "lshift",
        "rshift",
        "and",
        "or",
        "xor",
        "matmul",
    )
}


# ``x.__iadd__(y)`` written out (not ``x += y``) is recorded as call_method '__iadd__'.
_INPLACE_DUNDERS = {
    f"__i{n}__"
    for n in (
        "add",
        "sub",
        "mul",
        "div",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
        "matmul",
    )
} | {"__setitem__"}


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


# ------------------------------------------------------------------------------ modules
def _tf_layer(decoder: bool = False) -> nn.Module:
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    return cls(4, 2, 8, batch_first=True)


def _pair(t: Any) -> tuple:
    return t[0], t[1]


_POOL1 = {nn.MaxUnpool1d: F.max_pool1d, nn.MaxUnpool2d: F.max_pool2d, nn.MaxUnpool3d: F.max_pool3d}
_I1, _I2, _I3 = f(2, 3, 6), f(2, 3, 4, 4), f(1, 2, 4, 4, 4)  # (N,C,L), (N,C,H,W), (N,C,D,H,W)

# One constructor and input per torch.nn class in the registry (train mode unless noted).
MODULE_CASES: dict[type, Case] = {
    nn.AdaptiveAvgPool1d: mod(lambda: nn.AdaptiveAvgPool1d(2), _I1),
    nn.AdaptiveAvgPool2d: mod(lambda: nn.AdaptiveAvgPool2d(2), _I2),
    nn.AdaptiveAvgPool3d: mod(lambda: nn.AdaptiveAvgPool3d(2), _I3),
    nn.AdaptiveMaxPool1d: mod(lambda: nn.AdaptiveMaxPool1d(2), _I1),
    nn.AdaptiveMaxPool2d: mod(lambda: nn.AdaptiveMaxPool2d(2), _I2),
    nn.AdaptiveMaxPool3d: mod(lambda: nn.AdaptiveMaxPool3d(2), _I3),
    nn.AdaptiveLogSoftmaxWithLoss: mod(
        lambda: nn.AdaptiveLogSoftmaxWithLoss(16, 6, [2, 4], div_value=2.0), f(4, 16), ix(4, high=6)
    ),
    nn.AlphaDropout: mod(lambda: nn.AlphaDropout(0.5), f(3, 4)),
    nn.FeatureAlphaDropout: mod(lambda: nn.FeatureAlphaDropout(0.5), _I2),
    nn.AvgPool1d: mod(lambda: nn.AvgPool1d(2), _I1),
    nn.AvgPool2d: mod(lambda: nn.AvgPool2d(2), _I2),
    nn.AvgPool3d: mod(lambda: nn.AvgPool3d(2), _I3),
    nn.BCELoss: mod(nn.BCELoss, f(3, 4), f(3, 4)),
    nn.BCEWithLogitsLoss: mod(nn.BCEWithLogitsLoss, f(3, 4), f(3, 4)),
    nn.BatchNorm1d: mod(lambda: nn.BatchNorm1d(3), f(4, 3)),
    nn.BatchNorm2d: mod(lambda: nn.BatchNorm2d(3), f(2, 3, 4, 4)),
    nn.BatchNorm3d: mod(lambda: nn.BatchNorm3d(3), f(2, 3, 2, 2, 2)),
    nn.SyncBatchNorm: mod(
        lambda: nn.SyncBatchNorm(3),
        f(2, 3, 4, 4),
        train=False,
        note="eval mode (training needs a process group and a GPU)",
    ),
    nn.Bilinear: mod(lambda: nn.Bilinear(4, 5, 6), f(3, 4), f(3, 5)),
    nn.CELU: mod(nn.CELU, f(3, 4)),
    nn.CTCLoss: mod(
        nn.CTCLoss,
        f(5, 2, 4),
        ix(2, 3, high=3),
        call=lambda m, lp, t: m(lp.log_softmax(2), t + 1, (5, 5), (3, 3)),
    ),
    nn.ChannelShuffle: mod(lambda: nn.ChannelShuffle(2), f(1, 4, 2, 2)),
    nn.CircularPad1d: mod(lambda: nn.CircularPad1d(1), f(2, 3, 4)),
    nn.CircularPad2d: mod(lambda: nn.CircularPad2d(1), f(1, 2, 3, 3)),
    nn.CircularPad3d: mod(lambda: nn.CircularPad3d(1), f(1, 1, 2, 2, 2)),
    nn.ConstantPad1d: mod(lambda: nn.ConstantPad1d(1, 0.5), f(2, 3, 4)),
    nn.ConstantPad2d: mod(lambda: nn.ConstantPad2d(1, 0.5), f(1, 2, 3, 3)),
    nn.ConstantPad3d: mod(lambda: nn.ConstantPad3d(1, 0.5), f(1, 1, 2, 2, 2)),
    nn.Conv1d: mod(lambda: nn.Conv1d(3, 4, 3, padding=1), _I1),
    nn.Conv2d: mod(lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), _I2),
    nn.Conv3d: mod(lambda: nn.Conv3d(2, 3, 3, padding=1), _I3),
    nn.ConvTranspose1d: mod(lambda: nn.ConvTranspose1d(3, 4, 3, stride=2), _I1),
    nn.ConvTranspose2d: mod(lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), _I2),
    nn.ConvTranspose3d: mod(lambda: nn.ConvTranspose3d(2, 3, 2), _I3),
    nn.CosineEmbeddingLoss: mod(nn.CosineEmbeddingLoss, f(3, 4), f(3, 4), sign(3)),
    nn.CosineSimilarity: mod(nn.CosineSimilarity, f(3, 4), f(3, 4)),
    nn.CrossEntropyLoss: mod(nn.CrossEntropyLoss, f(3, 4), ix(3, high=4)),
    nn.CrossMapLRN2d: mod(lambda: nn.CrossMapLRN2d(3), f(2, 4, 3, 3)),
    nn.Dropout: mod(lambda: nn.Dropout(0.5), f(3, 4)),
    nn.Dropout1d: mod(lambda: nn.Dropout1d(0.5), f(2, 3, 4)),
    nn.Dropout2d: mod(lambda: nn.Dropout2d(0.5), _I2),
    nn.Dropout3d: mod(lambda: nn.Dropout3d(0.5), f(2, 3, 2, 2, 2)),
    nn.ELU: mod(nn.ELU, f(3, 4)),
    nn.Embedding: mod(lambda: nn.Embedding(10, 3), ix(2, 4, high=10)),
    nn.EmbeddingBag: mod(lambda: nn.EmbeddingBag(10, 3, mode="mean"), ix(2, 3, high=10)),
    nn.Flatten: mod(nn.Flatten, f(2, 3, 4)),
    nn.Fold: mod(lambda: nn.Fold((4, 4), 2), f(1, 8, 9)),
    nn.FractionalMaxPool2d: mod(lambda: nn.FractionalMaxPool2d(2, output_size=3), f(1, 2, 6, 6)),
    nn.FractionalMaxPool3d: mod(lambda: nn.FractionalMaxPool3d(2, output_size=2), f(1, 2, 5, 5, 5)),
    nn.GELU: mod(nn.GELU, f(3, 4)),
    nn.GLU: mod(nn.GLU, f(3, 4)),
    nn.GRU: mod(
        lambda: nn.GRU(4, 5), f(3, 2, 4), note="unrolled: one torch.gru_cell vertex per step"
    ),
    nn.GRUCell: mod(lambda: nn.GRUCell(4, 5), f(3, 4)),
    nn.GaussianNLLLoss: mod(nn.GaussianNLLLoss, f(3, 4), f(3, 4), f(3, 4)),
    nn.GroupNorm: mod(lambda: nn.GroupNorm(2, 4), f(2, 4, 3)),
    nn.Hardshrink: mod(lambda: nn.Hardshrink(0.3), f(3, 4)),
    nn.Hardsigmoid: mod(nn.Hardsigmoid, f(3, 4)),
    nn.Hardswish: mod(nn.Hardswish, f(3, 4)),
    nn.Hardtanh: mod(lambda: nn.Hardtanh(0.3, 0.6), f(3, 4)),
    nn.HingeEmbeddingLoss: mod(nn.HingeEmbeddingLoss, f(3, 4), sign(3, 4)),
    nn.HuberLoss: mod(lambda: nn.HuberLoss(delta=0.3), f(3, 4), f(3, 4)),
    nn.Identity: mod(nn.Identity, f(3, 4)),
    nn.InstanceNorm1d: mod(
        lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), f(2, 3, 5)
    ),
    nn.InstanceNorm2d: mod(
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), f(2, 3, 3, 3)
    ),
    nn.InstanceNorm3d: mod(
        lambda: nn.InstanceNorm3d(3, affine=True, track_running_stats=True), f(2, 3, 2, 2, 2)
    ),
    nn.KLDivLoss: mod(lambda: nn.KLDivLoss(reduction="batchmean"), f(3, 4), f(3, 4)),
    nn.L1Loss: mod(nn.L1Loss, f(3, 4), f(3, 4)),
    nn.LPPool1d: mod(lambda: nn.LPPool1d(2, 2), _I1),
    nn.LPPool2d: mod(lambda: nn.LPPool2d(2, 2), _I2),
    nn.LPPool3d: mod(lambda: nn.LPPool3d(2, 2), _I3),
    nn.LSTM: mod(
        lambda: nn.LSTM(4, 5), f(3, 2, 4), note="unrolled: one torch.lstm_cell vertex per step"
    ),
    nn.LSTMCell: mod(lambda: nn.LSTMCell(4, 5), f(3, 4)),
    nn.LayerNorm: mod(lambda: nn.LayerNorm(4), f(3, 4)),
    nn.LeakyReLU: mod(lambda: nn.LeakyReLU(0.1), f(3, 4)),
    nn.Linear: mod(lambda: nn.Linear(4, 3), f(3, 4)),
    nn.LocalResponseNorm: mod(lambda: nn.LocalResponseNorm(2), f(2, 4, 3, 3)),
    nn.LogSigmoid: mod(nn.LogSigmoid, f(3, 4)),
    nn.LogSoftmax: mod(lambda: nn.LogSoftmax(1), f(3, 4)),
    nn.MSELoss: mod(nn.MSELoss, f(3, 4), f(3, 4)),
    nn.MarginRankingLoss: mod(lambda: nn.MarginRankingLoss(0.1), f(3), f(3), sign(3)),
    nn.MaxPool1d: mod(lambda: nn.MaxPool1d(2), _I1),
    nn.MaxPool2d: mod(lambda: nn.MaxPool2d(2), _I2),
    nn.MaxPool3d: mod(lambda: nn.MaxPool3d(2), _I3),
    **{
        cls: mod(
            lambda cls=cls: cls(2),
            shape,
            call=lambda m, x, pool=_POOL1[cls]: m(*_pair(pool(x, 2, return_indices=True))),
            note="after F.max_poolNd(..., return_indices=True)",
        )
        for cls, shape in ((nn.MaxUnpool1d, _I1), (nn.MaxUnpool2d, _I2), (nn.MaxUnpool3d, _I3))
    },
    nn.Mish: mod(nn.Mish, f(3, 4)),
    nn.MultiLabelMarginLoss: mod(nn.MultiLabelMarginLoss, f(3, 4), ix(3, 4, high=4)),
    nn.MultiLabelSoftMarginLoss: mod(nn.MultiLabelSoftMarginLoss, f(3, 4), f(3, 4)),
    nn.MultiMarginLoss: mod(nn.MultiMarginLoss, f(3, 4), ix(3, high=4)),
    nn.MultiheadAttention: mod(
        lambda: nn.MultiheadAttention(4, 2), f(3, 2, 4), call=lambda m, q: m(q, q, q)
    ),
    nn.NLLLoss: mod(nn.NLLLoss, f(3, 4), ix(3, high=4)),
    nn.NLLLoss2d: mod(nn.NLLLoss2d, f(2, 3, 2, 2), ix(2, 2, 2, high=3)),
    nn.PReLU: mod(nn.PReLU, f(2, 3)),
    nn.PairwiseDistance: mod(nn.PairwiseDistance, f(3, 4), f(3, 4)),
    nn.PixelShuffle: mod(lambda: nn.PixelShuffle(2), f(1, 4, 2, 2)),
    nn.PixelUnshuffle: mod(lambda: nn.PixelUnshuffle(2), f(1, 1, 4, 4)),
    nn.PoissonNLLLoss: mod(nn.PoissonNLLLoss, f(3, 4), f(3, 4)),
    nn.RMSNorm: mod(lambda: nn.RMSNorm(4), f(3, 4)),
    nn.RNN: mod(
        lambda: nn.RNN(4, 5), f(3, 2, 4), note="unrolled: one torch.rnn_tanh_cell vertex per step"
    ),
    nn.RNNCell: mod(lambda: nn.RNNCell(4, 5), f(3, 4)),
    nn.RReLU: mod(nn.RReLU, f(3, 4, lo=-0.8, hi=0.8)),
    nn.ReLU: mod(nn.ReLU, f(3, 4, lo=-0.8, hi=0.8)),
    nn.ReLU6: mod(nn.ReLU6, f(3, 4)),
    nn.ReflectionPad1d: mod(lambda: nn.ReflectionPad1d(1), f(2, 3, 4)),
    nn.ReflectionPad2d: mod(lambda: nn.ReflectionPad2d(1), f(1, 2, 3, 3)),
    nn.ReflectionPad3d: mod(lambda: nn.ReflectionPad3d(1), f(1, 1, 3, 3, 3)),
    nn.ReplicationPad1d: mod(lambda: nn.ReplicationPad1d(1), f(2, 3, 4)),
    nn.ReplicationPad2d: mod(lambda: nn.ReplicationPad2d(1), f(1, 2, 3, 3)),
    nn.ReplicationPad3d: mod(lambda: nn.ReplicationPad3d(1), f(1, 1, 2, 2, 2)),
    nn.SELU: mod(nn.SELU, f(3, 4)),
    nn.SiLU: mod(nn.SiLU, f(3, 4)),
    nn.Sigmoid: mod(nn.Sigmoid, f(3, 4)),
    nn.SmoothL1Loss: mod(lambda: nn.SmoothL1Loss(beta=0.3), f(3, 4), f(3, 4)),
    nn.SoftMarginLoss: mod(nn.SoftMarginLoss, f(3, 4), sign(3, 4)),
    nn.Softmax: mod(lambda: nn.Softmax(1), f(3, 4)),
    nn.Softmax2d: mod(nn.Softmax2d, f(2, 3, 2, 2)),
    nn.Softmin: mod(lambda: nn.Softmin(1), f(3, 4)),
    nn.Softplus: mod(nn.Softplus, f(3, 4)),
    nn.Softshrink: mod(lambda: nn.Softshrink(0.3), f(3, 4)),
    nn.Softsign: mod(nn.Softsign, f(3, 4)),
    nn.Tanh: mod(nn.Tanh, f(3, 4)),
    nn.Tanhshrink: mod(nn.Tanhshrink, f(3, 4)),
    nn.Threshold: mod(lambda: nn.Threshold(0.5, 0.0), f(3, 4)),
    nn.Transformer: mod(
        lambda: nn.Transformer(4, 2, 1, 1, 8, batch_first=True),
        f(2, 3, 4),
        f(2, 2, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerEncoder: mod(
        lambda: nn.TransformerEncoder(_tf_layer(), 1, enable_nested_tensor=False),
        f(2, 3, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerDecoder: mod(
        lambda: nn.TransformerDecoder(_tf_layer(True), 1),
        f(2, 2, 4),
        f(2, 3, 4),
        train=False,
        note="eval mode",
    ),
    nn.TransformerEncoderLayer: mod(_tf_layer, f(2, 3, 4), train=False, note="eval mode"),
    nn.TransformerDecoderLayer: mod(
        lambda: _tf_layer(True), f(2, 2, 4), f(2, 3, 4), train=False, note="eval mode"
    ),
    nn.TripletMarginLoss: mod(nn.TripletMarginLoss, f(3, 4), f(3, 4), f(3, 4)),
    nn.TripletMarginWithDistanceLoss: mod(
        nn.TripletMarginWithDistanceLoss, f(3, 4), f(3, 4), f(3, 4)
    ),
    nn.Unflatten: mod(lambda: nn.Unflatten(1, (2, 2)), f(3, 4)),
    nn.Unfold: mod(lambda: nn.Unfold(2), f(1, 2, 4, 4)),
    nn.Upsample: mod(lambda: nn.Upsample(scale_factor=2), f(1, 2, 3, 3)),
    nn.UpsamplingBilinear2d: mod(lambda: nn.UpsamplingBilinear2d(scale_factor=2), f(1, 2, 3, 3)),
    nn.UpsamplingNearest2d: mod(lambda: nn.UpsamplingNearest2d(scale_factor=2), f(1, 2, 3, 3)),
    nn.ZeroPad1d: mod(lambda: nn.ZeroPad1d(1), f(2, 3, 4)),
    nn.ZeroPad2d: mod(lambda: nn.ZeroPad2d(1), f(1, 2, 3, 3)),
    nn.ZeroPad3d: mod(lambda: nn.ZeroPad3d(1), f(1, 1, 2, 2, 2)),
    nn.LinearCrossEntropyLoss: mod(lambda: nn.LinearCrossEntropyLoss(4, 5), f(3, 4), ix(3, high=5)),
}
MODULE_SKIPS: dict[type, str] = {
    nn.RNNBase: "abstract base of RNN/LSTM/GRU (those are tested)",
    nn.RNNCellBase: "abstract base of RNNCell/LSTMCell/GRUCell (those are tested)",
    **{
        getattr(nn, n): "lazy module: after its first call it is the eager class (tested); "
        "convert an initialised model"
        for n in (
            "LazyBatchNorm1d",
            "LazyBatchNorm2d",
            "LazyBatchNorm3d",
            "LazyConv1d",
            "LazyConv2d",
            "LazyConv3d",
            "LazyConvTranspose1d",
            "LazyConvTranspose2d",
            "LazyConvTranspose3d",
            "LazyInstanceNorm1d",
            "LazyInstanceNorm2d",
            "LazyInstanceNorm3d",
            "LazyLinear",
        )
        if hasattr(nn, n)
    },
}


# ------------------------------------------------------------------------------ the check
# Recurrent layers are unrolled at conversion: one cell vertex per time step (see unroll.py).
UNROLLED = {nn.LSTM: torch.lstm_cell, nn.GRU: torch.gru_cell, nn.RNN: torch.rnn_tanh_cell}


def _graph_has(pcm: pccompile.PCModule, e: Entry) -> bool:
    for n in pcm.plan.gm.graph.nodes:
        if e.table == "module" and n.op == "call_function" and n.target is UNROLLED.get(e.key):
            return True
        if e.table == "function" and n.op == "call_function" and n.target is e.key:
            return True
        if e.table == "method" and n.op == "call_method" and n.target == e.key:
            return True
        if (
            e.table == "module"
            and n.op == "call_module"
            and type(pcm.plan.gm.get_submodule(n.target)) is e.key
        ):
            return True
    return False


def build(e: Entry) -> tuple[OneOp, tuple[Tensor, ...]]:
    assert e.case is not None
    return _one_op_class(len(e.case.args))(e.case, e.learn), inputs_for(e.case)


def check_case(e: Entry) -> None:
    """Forward equals the plain call, and one zil step equals bp (float64); raises if not."""
    model, xs = build(e)
    pcm = pccompile.convert(model, xs)
    assert _graph_has(pcm, e), f"{e.name} is not a node of the converted graph:\n{pcm.code}"
    torch.manual_seed(0)
    out = pcm(*xs)
    torch.manual_seed(0)
    ref = model(*xs)
    assert type(out) is type(ref)
    flat_o, flat_r = tree_flatten(out)[0], tree_flatten(ref)[0]
    assert len(flat_o) == len(flat_r)
    # Unrolled RNNs compute cell by cell where torch's fused kernel does not: equal to rounding.
    tol = 1e-12 if e.key in UNROLLED else 0.0
    for a, b in zip(flat_o, flat_r, strict=True):
        if isinstance(b, Tensor):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)
        else:
            assert a == b
    # Both schedules: the faithful one re-evaluates the op at every inference step, which is
    # where a mis-declared kind (a random or stateful op called pure) shows.
    assert_matches_bp(pcm, xs, None, weighted_sum, "zil", tol=1e-12, mode="efficient")
    with warnings.catch_warnings():
        # Behind the error front, moved value nodes may leave an op's domain (log, sqrt, acos):
        # the energy becomes NaN there and a RuntimeWarning says so; every parameter was read
        # before, and the comparison below still asserts BP's gradients.
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_matches_bp(pcm, xs, None, weighted_sum, "zil", tol=1e-12, mode="faithful")


def _tested() -> list[Entry]:
    return [e for e in catalogue() if e.case is not None]


@pytest.mark.parametrize("entry", _tested(), ids=lambda e: e.name)
def test_single_op_forward_and_zil_equal_bp(entry):
    check_case(entry)


@pytest.mark.parametrize("name", ["torch.nn.functional.dropout", "nn.Dropout"])
def test_an_op_misdeclared_as_pure_fails_its_check(name, monkeypatch):
    """Falsifying: dropout re-registered as pure draws a new mask at every re-evaluation, and
    the faithful schedule's check must catch it."""
    (entry,) = [e for e in _tested() if e.name == name]
    table = ops.registry._MODULES if entry.table == "module" else ops.registry._FUNCTIONS
    monkeypatch.setitem(table, entry.key, ops.OpRule("pure"))
    with pytest.raises(AssertionError, match="differs from bp"):
        check_case(entry)


def test_every_registered_op_has_a_case_or_a_reason():
    entries = catalogue()
    r = ops.registered_ops()
    assert sum(1 for e in entries if e.table == "module") == len(r["modules"])
    assert sum(1 for e in entries if e.table == "method") == len(r["methods"])
    for e in entries:
        assert (e.case is None) != (not e.reason), e.name
    # Every torch.nn layer is a deliberate entry: a constructor, or a reason why not.
    for cls in ops.registry._MODULES:
        assert cls in MODULE_CASES or cls in MODULE_SKIPS, f"add nn.{cls.__name__} to MODULE_CASES"
    # A floor, not an exact count: the registry follows the installed torch's API.
    tested = {
        t: sum(1 for e in entries if e.table == t and e.case)
        for t in ("function", "method", "module")
    }
    assert tested["module"] >= 130 and tested["function"] >= 480 and tested["method"] >= 230


def test_hand_written_cases_name_registered_ops():
    names = {e.name for e in catalogue()}
    stale = sorted(set(FUNCTION_CASES) - names)
    assert not stale, f"FUNCTION_CASES entries that are not registry keys: {stale}"


# ------------------------------------------------------------------------------ unknown ops
def _scaled_softplus(x):
    return F.softplus(x) * 2


torch.fx.wrap("_scaled_softplus")


class _Uses(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.lin, self.how, self.act = nn.Linear(4, 3), how, nn.Tanh()

    def forward(self, x):
        h = self.lin(x)
        if self.how == "function":
            return _scaled_softplus(h)
        if self.how == "method":
            return h.tanh()
        return self.act(h)


@pytest.mark.parametrize(
    "how, node, needle",
    [
        ("function", "_scaled_softplus", "(test_ops_coverage."),
        ("method", "tanh", "(Tensor.tanh): no rule for this Tensor method"),
        ("module", "act", "(module 'act')"),
    ],
)
def test_unregistered_function_method_or_module_raises_naming_node_and_fix(
    monkeypatch, how, node, needle
):
    """There is no fallback: an op without a rule raises UnsupportedOpError at convert().
    Every public Tensor method and torch.nn layer has a rule, so the test takes one away."""
    if how == "method":
        monkeypatch.delitem(ops.registry._METHODS, "tanh")
    if how == "module":
        monkeypatch.delitem(ops.registry._MODULES, nn.Tanh)
    with pytest.raises(UnsupportedOpError) as err:
        pccompile.convert(_Uses(how), torch.randn(2, 4))
    msg = str(err.value)
    assert msg.startswith(f"Node '{node}' ") and needle in msg
    assert "leaf_modules=" in msg and "register_function" in msg and "register_module" in msg
    if how == "module":
        assert "no rule for leaf module class Tanh" in msg


def test_catalogue_uses_documented_names_and_rule_kinds():
    """Sanity of the naming the table uses: a few keys by their documented names."""
    names = {e.name: e for e in catalogue()}
    for n in (
        "operator.add",
        "operator.getitem",
        "torch.conv2d",
        "Tensor.view",
        "nn.Conv2d",
        "builtins.getattr",
    ):
        assert n in names, n
    assert names["operator.add"].key is operator.add
    assert names["nn.Dropout"].kind == "stochastic" and names["nn.BatchNorm2d"].kind == "stateful"
