"""Regression tests for defects found by the reliability review (each failed before its fix)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_bp

import pccompile
from pccompile import InputError, TraceError, UnsupportedOpError, ops


class InplaceDunder(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(4, 5), nn.Linear(5, 3), op

    def forward(self, x):
        h = self.a(x)  # (a Linear's output is not saved for its backward, so eager BP works)
        g = getattr(h, self.op)(2.0)  # written out: h.__imul__(2.0); g is h, mutated
        return self.b(torch.tanh(g + h))


@pytest.mark.parametrize("op", ["__imul__", "__iadd__", "__isub__", "__itruediv__"])
def test_explicit_in_place_dunders_are_rewritten_out_of_place(op):
    torch.manual_seed(0)
    model = InplaceDunder(op).double()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    pcm = pccompile.convert(model, x)
    assert not any(n.op == "call_method" and n.target == op for n in pcm.plan.nodes)
    torch.testing.assert_close(pcm(x), model(x), rtol=0, atol=0)
    assert_matches_bp(pcm, (x,), y, F.mse_loss)


class ExplicitSetItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        h.__setitem__(0, 0.0)
        return h


def test_explicit_setitem_is_refused():
    with pytest.raises(UnsupportedOpError, match=r"assigns into a tensor in place.*torch\.where"):
        pccompile.convert(ExplicitSetItem(), torch.randn(2, 4), capture="fx")


class Flip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x, flip=False):
        h = self.a(x)
        if flip:
            h = -h
        return h


def test_concrete_args_with_a_non_default_value_need_not_be_passed_again():
    model = Flip().double()
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    pcm = pccompile.convert(model, x, concrete_args={"flip": True})
    torch.testing.assert_close(pcm(x), model(x, True))
    assert_matches_bp(pcm, (x,), y, lambda o, t: F.mse_loss(o, t))


def test_bp_rule_validates_like_the_pc_rules():
    net = pccompile.convert(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4))
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    for bad in (lambda o, t: (o - t) ** 2, lambda o, t: 1.0):
        for rule in ("bp", "zil"):
            with pytest.raises(InputError, match="scalar float tensor"):
                net.learn(x, target=y, loss_fn=bad, rule=rule)
    empty = pccompile.convert(nn.Sequential(nn.Tanh()), torch.randn(2, 3))
    for rule in ("bp", "zil"):
        empty.learn(torch.randn(2, 3), target=torch.randn(2, 3), loss_fn=F.mse_loss, rule=rule)


class DataPtr(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        h.retain_grad()
        return h


def test_refused_methods_are_named_before_anything_runs():
    with pytest.raises(UnsupportedOpError, match=r"Tensor\.retain_grad.*touches autograd state"):
        pccompile.convert(DataPtr(), torch.randn(2, 4), capture="fx")


class MyAct(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_registered_user_leaf_class_gets_its_rule():
    model = nn.Sequential(nn.Linear(4, 4), MyAct(), nn.Linear(4, 2))
    ops.register_module(MyAct, kind="pure")
    try:
        pcm = pccompile.convert(model, torch.randn(2, 4), leaf_modules=[MyAct])
        rules = {n.target: n.meta["pc"].rule.kind for n in pcm.plan.nodes if n.op == "call_module"}
        assert rules["1"] == "pure"
    finally:
        del ops.registry._MODULES[MyAct]
    pcm = pccompile.convert(model, torch.randn(2, 4), leaf_modules=[MyAct])
    assert {n.target: n.meta["pc"].rule.kind for n in pcm.plan.nodes if n.op == "call_module"}[
        "1"
    ] == "opaque"


class Unflatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x).unflatten(1, (2, 2)).sum(-1)


def test_unflatten_method_has_a_rule():
    model = Unflatten().double()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    assert_matches_bp(pccompile.convert(model, x), (x,), y, F.mse_loss)


def mystery2(x):
    return x + 1


torch.fx.wrap("mystery2")


class UsesMystery(nn.Module):
    def forward(self, x):
        return mystery2(x * 2)


def test_function_names_are_not_quoted_in_messages():
    with pytest.raises(UnsupportedOpError) as err:
        pccompile.convert(UsesMystery(), torch.randn(2, 3), capture="fx")
    assert (
        "test_fixes.mystery2)" in str(err.value)
        and "'mystery2'" not in str(err.value).split("(")[1]
    )


def test_nan_in_a_nested_target_is_refused():
    net = pccompile.convert(nn.Linear(4, 3), torch.randn(2, 4))
    bad = {"y": torch.tensor([[0.0, float("nan"), 0.0]] * 2)}
    with pytest.raises(InputError, match="NaN or Inf"):
        net.learn(torch.randn(2, 4), target=bad, loss_fn=lambda o, t: F.mse_loss(o, t["y"]))


class IsInstance(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        if isinstance(x, torch.Tensor):  # False for FX's proxy: the trace takes the other branch
            return self.a(x)
        return -self.a(x)


def test_a_trace_that_differs_from_eager_is_refused_at_convert():
    with pytest.raises(TraceError, match=r"differs from the module's own output.*isinstance"):
        pccompile.convert(IsInstance(), torch.randn(2, 4), capture="fx")
