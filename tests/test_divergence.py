"""Regression tests for silent divergence from BP over whole training runs (issue 10).

Each case trains a BP copy and a PC copy of a small model through the differential checker
(`pccompile.testing.train_against_bp`: accumulation, clipping, momentum, weight decay,
`zero_grad(set_to_none=False)`), in float64, in both schedules, and asserts the result at the
precision the code achieves: bitwise where the schedule is bitwise, 1e-12 relative otherwise.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.testing import Habits, train_against_bp

TOL = 1e-12
MODES = ["efficient", "faithful"]
RULES = ["zil", "fpa"]
HABITS = Habits()


def data(in_shape, n_out, n=4, seed=0, classes=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(*in_shape, generator=g, dtype=torch.float64)
        if classes:
            y = torch.randint(0, n_out, (in_shape[0],), generator=g)
        else:
            y = torch.randn(in_shape[0], n_out, generator=g, dtype=torch.float64)
        out.append(((x,), y))
    return out


def check(
    model,
    batches,
    rule="zil",
    mode="efficient",
    tol=TOL,
    loss_fn=F.cross_entropy,
    habits=HABITS,
    **kw,
):
    rep = train_against_bp(model.double(), batches, loss_fn, rule, mode=mode, habits=habits, **kw)
    assert rep.ok(tol), "\n".join(rep.problems(tol))
    return rep


# 1. Parameters added at the activation's full shape: their grads must not alias.
class FullShapeParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.a = nn.Parameter(torch.randn(1, 5))
        self.b = nn.Parameter(torch.randn(1, 5))
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x) + self.a + self.b))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_full_shape_params_do_not_share_grad(rule, mode):
    torch.manual_seed(0)
    check(FullShapeParams(), data((1, 6), 3), rule, mode)


# 2. A user leaf reused on two branches, batch 1.
class AddAB(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(1, 5))
        self.b = nn.Parameter(torch.randn(1, 5))

    def forward(self, x):
        return x + self.a + self.b


class ReusedLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(6, 5)
        self.leaf = AddAB()
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.leaf(self.l1(x))) + torch.tanh(self.leaf(self.l2(x))))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_reused_user_leaf(rule, mode):
    torch.manual_seed(0)
    check(ReusedLeaf(), data((1, 6), 3), rule, mode, convert_options={"leaf_modules": [AddAB]})


# 3. Buffers updated inside traced-through code.
class EMANorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("mu", torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mu.lerp_(x.mean(0), 0.1)
                self.count += 1
        return x - self.mu


class WithEMA(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.norm = EMANorm(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.l1(x))))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_buffer_updates_in_traced_code(rule, mode):
    torch.manual_seed(0)
    rep = check(WithEMA(), data((4, 6), 3), rule, mode)
    assert rep.rows[-1].buffer_diff == 0.0


# 4. In-place writes through a view: refused at convert, with the line named.
class ViewWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = self.l1(x)
        h[:, :1].mul_(1.0005)
        return self.out(h)


def test_inplace_write_through_view_is_refused():
    torch.manual_seed(0)
    with pytest.raises(pccompile.TraceError, match=r"h\[:, :1\]\.mul_"):
        pccompile.convert(ViewWrite().double(), torch.randn(4, 6, dtype=torch.float64))


class AugmentedViewWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = self.l1(x)
        v = h[:, 1:]
        v += F.relu(h[:, :1])  # in place on a view of h: Python's += on a Proxy would rebind v
        return self.out(h)


def test_augmented_assignment_through_view_is_refused():
    with pytest.raises(pccompile.TraceError, match=r"v \+= F\.relu"):
        pccompile.convert(AugmentedViewWrite().double(), torch.randn(4, 6, dtype=torch.float64))


class TensorConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.l1(x) * torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype)))


@pytest.mark.parametrize("mode", MODES)
def test_tensor_constant_built_in_forward(mode):
    torch.manual_seed(0)
    m = TensorConstant()
    check(m, data((2, 3), 2), "zil", mode)
    assert not hasattr(m, "_tensor_constant0")  # convert left the user's model as it was


class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)

    def forward(self, x):
        if not torch.jit.is_tracing() and not isinstance(x, torch.fx.Proxy):
            raise ValueError("eager forward refuses this batch")
        return self.l1(x)


def test_trace_check_does_not_swallow_eager_failure():
    with pytest.raises(pccompile.TraceError, match="eager forward refuses"):
        pccompile.convert(Picky(), torch.randn(4, 6))


class TinyDrift(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)

    def forward(self, x):
        h = self.l1(x)
        if isinstance(h, torch.fx.Proxy):  # takes another branch under tracing, off by 1e-9
            return h * (1 + 1e-9)
        return h


def test_trace_check_tolerance_is_dtype_tight():
    with pytest.raises(pccompile.TraceError, match="differs"):
        pccompile.convert(
            TinyDrift().double(), torch.randn(4, 6, dtype=torch.float64), capture="fx"
        )


# 5. Stateful parametrizations (spectral norm's power iteration).
class SpectralNet(nn.Module):
    def __init__(self, conv):
        super().__init__()
        P = torch.nn.utils.parametrizations
        if conv:
            self.l1 = P.spectral_norm(nn.Conv2d(2, 3, 3, padding=1))
            self.out = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 3))
        else:
            self.l1 = P.spectral_norm(nn.Linear(6, 5))
            self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.l1(x)))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_spectral_norm_parametrization(conv, rule, mode):
    torch.manual_seed(0)
    shape = (4, 2, 5, 5) if conv else (4, 6)
    check(SpectralNet(conv), data(shape, 3), rule, mode)


# 7. Parameters reached through constants, buffers and parameter-only leaves.
class PosEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Embedding(4, 5)
        self.tok = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):  # x: (B, T=4, 6)
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.out(torch.tanh(h)).mean(1)


class LearnedQuery(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 6))
        self.q = nn.Linear(6, 5)
        self.k = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.k(x) * self.q(self.query)))


class TiedTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 5) / 3)
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(h @ self.w + h @ self.w.t())
        return self.out(h)


class BufferMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(1, 4))
        self.mlp = nn.Linear(4, 5)
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.l1(x) + self.mlp(self.table)))


@pytest.mark.parametrize("make", [PosEmbed, LearnedQuery, TiedTranspose, BufferMLP])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_params_reached_through_constants(make, rule, mode):
    torch.manual_seed(0)
    shape = (3, 4, 6) if make is PosEmbed else (3, 6)
    check(make(), data(shape, 3), rule, mode)


# 8. Autograd semantics: custom Functions and no_grad blocks.
class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


class SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


class WithFunction(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.fn.apply(torch.tanh(self.l1(x))))


class NoGradBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        with torch.no_grad():
            g = self.l2(h)
        return self.out(h + g)


@pytest.mark.parametrize("fn", [GradReverse, SignSTE], ids=["reverse", "ste"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_custom_autograd_function(fn, rule, mode):
    torch.manual_seed(0)
    check(WithFunction(fn), data((3, 6), 3), rule, mode)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_no_grad_block(rule, mode):
    torch.manual_seed(0)
    check(NoGradBlock(), data((3, 6), 3), rule, mode)


# 9. convert leaves the model as it found it (caches filled in eval forward).
class CachedBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(5))
        self.cache = {}
        self.l1 = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def get_bias(self):
        if self.training:
            return self.bias * 1.0
        if "b" not in self.cache:
            self.cache["b"] = self.bias * 1.0
        return self.cache["b"]

    def forward(self, x):
        return self.out(torch.tanh(self.l1(x) + self.get_bias()))


def test_convert_leaves_model_untouched():
    torch.manual_seed(0)
    m = CachedBias().eval()
    pccompile.convert(m, torch.randn(3, 6))
    assert m.cache == {}
    x, y = torch.randn(3, 6), torch.randint(0, 3, (3,))
    F.cross_entropy(m(x), y).backward()
    assert m.bias.grad is not None


# 10. Stochastic depth (timm style: a Bernoulli mask drawn from new_empty).
class DropPath(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0], 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 6)
        self.l2 = nn.Linear(6, 6)
        self.drop = DropPath(0.5)
        self.drop2 = nn.Dropout(0.3)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        x = x + self.drop(torch.tanh(self.l1(x)))
        x = x + self.drop(torch.tanh(self.l2(self.drop2(x))))
        return self.out(x)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_stochastic_depth(rule, mode):
    torch.manual_seed(0)
    check(Residual(), data((8, 6), 3), rule, mode)


@pytest.mark.parametrize(
    "mode",
    ["efficient", pytest.param("faithful", marks=pytest.mark.slow)],  # 25-90 s each
)
@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
def test_timm_stochastic_depth_and_dropout(name, mode):
    """Issue 10's real-model case: timm's drop_path (a Bernoulli mask from new_empty) and
    dropout in train mode, float32, bitwise in both schedules."""
    timm = pytest.importorskip("timm")
    kw = {"drop_path_rate": 0.3}
    if name.startswith("vit"):
        kw |= {"drop_rate": 0.2, "attn_drop_rate": 0.1, "proj_drop_rate": 0.1}
        kw |= {"img_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw)
    g = torch.Generator().manual_seed(1)
    batches = [((torch.randn(2, 3, 32, 32, generator=g),), torch.tensor([1, 7])) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # faithful: energy behind the front
        rep = train_against_bp(model, batches, F.cross_entropy, "zil", mode=mode, habits=Habits(2))
    assert rep.ok(0.0), "\n".join(rep.problems(0.0))
