"""Untraceable models: every known-untraceable construct fails at ``convert()`` with one error
class and a message that names the source line and the remedies; constructs that trace but into
a graph that differs from eager mode are shown (pccompile does not detect them).

The submodule case (the remedy names the submodule to make a leaf, and doing so gives an exact
opaque vertex) is in test_errors.py (``test_untraceable_model_names_line_submodule_and_remedies``,
``test_marking_the_submodule_a_leaf_makes_it_an_exact_opaque_vertex``), as is ``torch.fx.wrap``
plus ``register_function`` (``test_op_without_rule_names_node_op_and_fix``).
"""

from __future__ import annotations

import inspect
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_bp

import pccompile
from pccompile import TraceError, UnsupportedOpError

D = torch.float64


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(4, 4), nn.Linear(4, 2)


# Each forward's offending line is marked ``# <-`` so the test can check the message names it.
class DataIf(Base):
    def forward(self, x):
        h = self.lin(x)
        if h.sum() > 0:  # <-
            return h
        return -h


class ItemIf(Base):
    def forward(self, x):
        h = self.lin(x)
        if h.mean().item() > 0:  # <-
            return h
        return -h


class NonzeroIf(Base):
    def forward(self, x):
        h = self.lin(x)
        if torch.nonzero(h > 0).shape[0] > 3:  # <-
            return h
        return -h


class MaskAnyIf(Base):
    def forward(self, x):
        h = self.lin(x)
        return h[h > 0].sum() if (h > 0).any() else h.sum()  # <-


class ShapeIf(Base):
    def forward(self, x):
        if x.shape[0] == 1:  # <-
            return self.lin(x)
        return -self.lin(x)


class IterRows(Base):
    def forward(self, x):
        return torch.stack([self.lin(r) for r in x])  # <-


class Generator(Base):
    def forward(self, x):
        return sum(r for r in self.lin(x))  # <-


class RangeSize(Base):
    def forward(self, x):
        rows = []
        for i in range(x.size(0)):  # <-
            rows.append(self.lin(x[i]))
        return torch.stack(rows)


class RangeLen(Base):
    def forward(self, x):
        return torch.stack([self.lin(x[i]) for i in range(len(x))])  # <-


class Tolist(Base):
    def forward(self, x):
        return self.lin(x) * max(x.tolist()[0])  # <-


class SetItem(Base):
    def forward(self, x):
        h = self.lin(x)
        h[0] = 0.0  # <-
        return h


class Hook(Base):
    def forward(self, x):
        h = self.lin(x)
        h.register_hook(lambda g: g)  # <-
        return h


CONTROL_FLOW = "symbolically traced variables cannot be used as inputs to control flow"
UNTRACEABLE = [
    (DataIf, CONTROL_FLOW),
    (ItemIf, CONTROL_FLOW),
    (NonzeroIf, CONTROL_FLOW),
    (MaskAnyIf, CONTROL_FLOW),
    (ShapeIf, CONTROL_FLOW),
    (IterRows, "Proxy object cannot be iterated"),
    (Generator, "Proxy object cannot be iterated"),
    (RangeSize, "'Proxy' object cannot be interpreted as an integer"),
    (RangeLen, "'len' is not supported in symbolic tracing"),
    (Tolist, "Proxy object cannot be iterated"),
    (Hook, "NotImplementedError"),
]


def _marked_line(cls: type) -> str:
    src = inspect.getsource(cls.forward)
    return next(line.split("# <-")[0].strip() for line in src.splitlines() if "# <-" in line)


@pytest.mark.parametrize("cls, cause", UNTRACEABLE, ids=[c.__name__ for c, _ in UNTRACEABLE])
def test_untraceable_construct_raises_trace_error_naming_line_and_remedies(cls, cause):
    with pytest.raises(TraceError) as err:
        pccompile.convert(cls(), torch.randn(3, 4), capture="fx")
    msg = str(err.value)
    assert msg.startswith(f"Cannot trace {cls.__name__} with torch.fx")
    assert cause in msg
    assert "test_untraceable.py:" in msg and _marked_line(cls) in msg, msg
    for remedy in ("leaf_modules=", "capture='export'"):  # each cause names its own remedies
        assert remedy in msg
    assert isinstance(err.value.__cause__, Exception)  # the original FX error is chained


def test_item_assignment_gets_the_in_place_message():
    with pytest.raises(TraceError) as err:
        pccompile.convert(SetItem(), torch.randn(3, 4), capture="fx")
    msg = str(err.value)
    assert msg.startswith("Cannot trace SetItem: it assigns into a tensor in place")
    assert "test_untraceable.py:" in msg and _marked_line(SetItem) in msg
    assert "torch.where" in msg and "leaf_modules=" in msg


class RequiresGrad(Base):
    def forward(self, x):
        h = self.lin(x)
        h.requires_grad_()
        return h


class CopyInto(Base):
    def forward(self, x):
        h = self.lin(x)
        h.copy_(x)
        return h


class RandomFill(Base):
    def forward(self, x):
        return self.lin(x).uniform_()


UNSUPPORTED = [
    (RequiresGrad, "requires_grad_", "changes requires_grad inside forward"),
    (CopyInto, "copy_", "copies into an existing tensor in place"),
    (RandomFill, "uniform_", "in-place method 'uniform_' has no out-of-place twin"),
]


@pytest.mark.parametrize("cls, node, cause", UNSUPPORTED, ids=[c.__name__ for c, *_ in UNSUPPORTED])
def test_traceable_but_unsupported_op_raises_unsupported_op_error(cls, node, cause):
    """These trace, but mutate value nodes or autograd state: no rule, so convert() refuses."""
    with pytest.raises(UnsupportedOpError) as err:
        pccompile.convert(cls(), torch.randn(3, 4), capture="fx")
    msg = str(err.value)
    assert msg.startswith(f"Node '{node}' (Tensor.{node})") and cause in msg
    assert "capture='export'" in msg and "register_method" in msg
    assert "path.to.module" not in msg  # the root module has no submodule to name


class Flag(Base):
    def forward(self, x, flip=False):
        h = torch.tanh(self.lin(x))
        if flip:  # Python control flow on an argument, not on data
            h = -h
        return self.out(h)


def test_concrete_args_remedy_fixes_an_argument_driven_branch():
    torch.manual_seed(0)
    model = Flag().double()
    x, y = torch.randn(3, 4, dtype=D), torch.randn(3, 2, dtype=D)
    with pytest.raises(TraceError, match="if flip:"):
        pccompile.convert(model, x, capture="fx")
    pcm = pccompile.convert(model, x, concrete_args={"flip": False})
    assert torch.equal(pcm(x), model(x))
    assert_matches_bp(pcm, (x,), y, F.mse_loss)


class Optional(Base):
    def forward(self, x, scale=None):
        h = torch.tanh(self.lin(x))
        if scale is not None:  # a Proxy is never None: the trace takes this branch
            h = h * scale
        return self.out(h)


def test_is_none_check_on_an_omitted_argument_fails_at_convert():
    """``scale is not None`` is True for the Proxy, so the graph multiplies by the default None;
    convert() runs the graph on the example inputs and fails there (InputError), before any
    learning. ``concrete_args={"scale": None}`` is the fix."""
    torch.manual_seed(0)
    model = Optional().double()
    x, y = torch.randn(3, 4, dtype=D), torch.randn(3, 2, dtype=D)
    with pytest.raises(pccompile.InputError, match="Running the traced model on the example"):
        pccompile.convert(model, x, capture="fx")
    # torch.export runs the Python: `scale is not None` is False there, and the graph is right
    pcm = pccompile.convert(model, x)
    assert torch.equal(pcm(x), model(x))
    assert_matches_bp(pcm, (x,), y, F.mse_loss)
    pcm = pccompile.convert(model, x, concrete_args={"scale": None})
    assert torch.equal(pcm(x), model(x))
    assert_matches_bp(pcm, (x,), y, F.mse_loss)


class MaskIndex(Base):
    def forward(self, x):
        h = torch.tanh(self.lin(x))
        idx = torch.nonzero(h[:, 0] > 0).squeeze(1)
        return self.out(h).sum(0) + h[h > 0].sum() + h[idx].sum()


def test_data_dependent_shapes_without_control_flow_trace_and_stay_exact():
    """Boolean-mask indexing and nonzero-driven gathers are fine when no Python branch reads
    them: masks and indices are constants of each pass, recomputed per batch."""
    torch.manual_seed(0)
    model = MaskIndex().double()
    pcm = pccompile.convert(model, torch.randn(3, 4, dtype=D))
    counts = set()
    for seed in range(4):  # batches whose masks select different numbers of elements
        torch.manual_seed(seed)
        x = torch.randn(3, 4, dtype=D)
        counts.add(int((torch.tanh(model.lin(x)) > 0).sum()))
        assert torch.equal(pcm(x), model(x))
        assert_matches_bp(pcm, (x,), torch.randn(2, dtype=D), F.mse_loss)
    assert len(counts) > 1


# ------------------------------------------------------------ traces, but not what eager runs
class IsInstance(Base):
    def forward(self, x):
        if isinstance(x, torch.Tensor):  # False while tracing: x is a Proxy
            return self.lin(x)
        return -self.lin(x)


class PyRandom(Base):
    def forward(self, x):
        if self.training and random.random() < 0.5:  # drawn once, at trace time
            return x
        return self.lin(x)


class Counter(Base):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1  # Python state: read once, at trace time
        return self.lin(x) * self.calls


class SeedInForward(Base):
    def forward(self, x):
        torch.manual_seed(0)  # runs at trace time only; not an op of the graph
        return F.dropout(self.lin(x), 0.5)


def test_isinstance_on_a_proxy_is_caught_by_the_eager_comparison():
    """The trace takes the other branch; convert() compares the traced output with the module's
    own on the example inputs and refuses the graph."""
    torch.manual_seed(0)
    with pytest.raises(TraceError, match="differs from the module's own output"):
        pccompile.convert(IsInstance(), torch.randn(3, 4), capture="fx")


def _seed_with_same_branch_twice() -> int:
    """A seed whose first two random.random() draws fall on the same side of 0.5 (the trace and
    convert's eager check each draw once)."""
    for seed in range(100):
        random.seed(seed)
        if (random.random() < 0.5) == (random.random() < 0.5):
            return seed
    raise AssertionError("no such seed")


def test_python_randomness_and_state_are_frozen_at_trace_time():
    """Python randomness and state are read at trace time. convert() catches them only when the
    eager check on the example happens to differ (the counter); otherwise the graph is frozen."""
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = PyRandom().train()
    random.seed(_seed_with_same_branch_twice())
    pcm = pccompile.convert(model, x)
    traced = {bool(torch.equal(pcm(x), x)) for _ in range(20)}
    eager = {bool(torch.equal(model(x), x)) for _ in range(20)}
    assert len(traced) == 1 and eager == {True, False}

    with pytest.raises(TraceError, match=r"changes Python attributes \(calls\)"):
        pccompile.convert(Counter(), x)  # the trace would multiply by 1 forever
    assert Counter().calls == 0


def test_manual_seed_inside_forward_is_refused():
    """Reseeding inside forward is not an op of the graph: the traced dropout would draw other
    masks than the module's, and the eager comparison (same RNG state) refuses it."""
    torch.manual_seed(1)
    model, x = SeedInForward().train(), torch.randn(3, 4)
    with pytest.raises(TraceError, match="differs from the module's own output"):
        pccompile.convert(model, x)
