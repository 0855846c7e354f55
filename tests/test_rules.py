"""The rules research PC uses now: ePC, nudging, MCPC; inference that says when it fails.

Exactness identities in float64 against plain autograd on the original module (rule "bp"), with
falsifying variants that must fail the same check.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from tests.helpers import rel_err
from tests.zoo import build


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8 * 3, 3)

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).flatten(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.inp(x)))
        return self.head(out[:, -1])


def _graph(name: str):
    if name in ("cnn", "residual", "concat"):
        return build(name)
    torch.manual_seed(0)
    model = (Attention() if name == "attention" else Recurrent()).double()
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 2, 0]), F.cross_entropy


def _grads(pcm, x, y, loss_fn, rule, **opts):
    for p in pcm.parameters():
        p.grad = None
    torch.manual_seed(0)
    report = pcm.learn(x, target=y, loss_fn=loss_fn, rule=rule, **opts)
    named = {n: p.grad.detach().clone() for n, p in pcm.named_parameters() if p.grad is not None}
    return named, report


def _read_from_loss(pcm) -> set[str]:
    """Parameters of the vertices the clamped output reads directly (no error variable)."""
    plan = pcm.plan
    ids = {id(p) for vid in plan.output.parents for p in plan.vertices[vid].params}
    return {n for n, p in pcm.named_parameters() if id(p) in ids}


GRAPHS = ["cnn", "residual", "concat", "attention", "lstm"]


def _epc_vs_bp(name: str, rule: str, eta: float) -> dict[str, float]:
    model, x, y, loss_fn = _graph(name)
    pcm = pccompile.convert(model, x, rule="epc", loss_fn=loss_fn)
    bp, _ = _grads(pcm, x, y, loss_fn, "bp")
    with warnings.catch_warnings():  # IL's one step leaves vertices unreached (and says so)
        warnings.simplefilter("ignore", pccompile.UnreachedWarning)
        pc, _ = _grads(pcm, x, y, loss_fn, rule, steps=1, gamma=eta)
    direct = _read_from_loss(pcm)
    assert direct and set(bp) - direct, "the check needs both kinds of vertices"
    return {n: rel_err(pc[n] if n in direct else pc[n] / eta, bp[n]) for n in bp}


@pytest.mark.parametrize("name", GRAPHS)
def test_one_epc_step_from_zero_errors_is_eta_times_bp(name):
    """One error step of size eta from eps = 0: eps_v = -eta B dL/dz_v (the reverse pass), so
    every vertex with an error variable gets eta x BP's gradient, and the vertices the loss reads
    directly get BP's; the remainder is O(eta) (the states moved by O(eta)), below 1e-12 here."""
    errors = _epc_vs_bp(name, "epc", 1e-13)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-11, (worst, errors[worst])


@pytest.mark.parametrize("name", ["residual", "concat"])
def test_epc_identity_remainder_is_first_order(name):
    """The O(eta) remainder is measured, not hidden: at eta = 1e-2 the identity fails the same
    tolerance, and the error falls by 10x per 10x smaller eta (order 1)."""
    big, small = _epc_vs_bp(name, "epc", 1e-2), _epc_vs_bp(name, "epc", 1e-3)
    moved = [n for n in big if big[n] > 1e-9]
    assert moved, "a step of 1e-2 must move the states enough to show"
    for n in moved:
        order = math.log10(big[n] / small[n])
        assert 0.8 < order < 1.2, (n, order)


@pytest.mark.parametrize("name", ["cnn", "residual", "lstm"])
def test_falsify_one_il_step_is_not_bp(name):
    """The same identity on IL (states relaxed, the error front one vertex per step) fails:
    one step does not bring the error to the vertices far from the output."""
    errors = _epc_vs_bp(name, "il", 1e-13)
    assert max(errors.values()) > 1e-3


def _mlp(dtype=torch.float64):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(5, 6, dtype=dtype)
    return net.to(dtype), x, torch.tensor([0, 1, 2, 0, 1])


def _nudging_error(nudging: str, beta: float, rule: str = "il", output: str = "clamp") -> float:
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule=rule, loss_fn=F.cross_entropy)
    bp, _ = _grads(pcm, x, y, F.cross_entropy, "bp")
    # enough steps to reach the equilibrium in float64 (the energy stops changing)
    pc, report = _grads(
        pcm,
        x,
        y,
        F.cross_entropy,
        rule,
        steps=400,
        gamma=0.5,
        beta=beta,
        nudging=nudging,
        output=output,
    )
    assert abs(report.energy[-1] - report.energy[-2]) < 1e-13 * abs(report.energy[-1])
    return max(rel_err(pc[n], bp[n]) for n in bp)


@pytest.mark.parametrize("output", ["clamp", "free"])
def test_nudging_order_at_equilibrium(output):
    """At equilibrium the nudged gradient approaches BP as beta -> 0: positive and negative
    nudging at first order, centred nudging at second (the odd terms cancel). Orders measured
    from beta and beta / 2."""
    b = 1e-2
    orders = {
        k: math.log2(_nudging_error(k, b, output=output) / _nudging_error(k, b / 2, output=output))
        for k in ("positive", "negative", "centered")
    }
    assert 0.8 < orders["positive"] < 1.2, orders
    assert 0.8 < orders["negative"] < 1.2, orders
    assert 1.8 < orders["centered"] < 2.2, orders


def test_nudging_is_an_epc_option_too():
    """ePC's equilibrium is IL's (the same energy, reparameterised): centred nudging there is
    second order as well."""
    e1, e2 = _nudging_error("centered", 1e-2, "epc"), _nudging_error("centered", 5e-3, "epc")
    assert 1.8 < math.log2(e1 / e2) < 2.2


def test_nudging_options_are_checked():
    with pytest.raises(pccompile.ConfigError, match="beta"):
        pccompile.IL(beta=-1.0)
    with pytest.raises(pccompile.ConfigError, match="nudging"):
        pccompile.IL(beta=0.1, nudging="sideways")
    with pytest.raises(pccompile.ConfigError, match="not both"):
        pccompile.IL(beta=0.1, output_precision=0.5)
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="ipc", loss_fn=F.cross_entropy)
    with pytest.raises(pccompile.ConfigError, match="centred nudging"):
        pcm.learn(x, target=y, rule=pccompile.IPC(lr=0.01, beta=0.1, nudging="centered"))


def test_mcpc_is_seeded_and_reproducible():
    """Langevin inference draws from its own seeded generator: the same seed gives the same
    gradients bitwise and leaves torch's global RNG alone; another seed differs; temperature 0
    is IL."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="mcpc", loss_fn=F.cross_entropy)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, ra = _grads(pcm, x, y, F.cross_entropy, pccompile.MCPC(steps=10, seed=3))
    b, rb = _grads(pcm, x, y, F.cross_entropy, pccompile.MCPC(steps=10, seed=3))
    c, _ = _grads(pcm, x, y, F.cross_entropy, pccompile.MCPC(steps=10, seed=4))
    assert ra.energy == rb.energy
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    torch.manual_seed(5)
    pcm.learn(x, target=y, rule=pccompile.MCPC(steps=10, seed=3))
    assert torch.equal(torch.get_rng_state(), before)
    cold, _ = _grads(pcm, x, y, F.cross_entropy, pccompile.MCPC(steps=10, temperature=0.0))
    il, _ = _grads(pcm, x, y, F.cross_entropy, "il", steps=10)
    assert all(torch.equal(cold[n], il[n]) for n in il)


def test_mcpc_noise_has_the_langevin_scale():
    """With nothing clamped (F = 1/2 sum eps^2 around the forward pass) one step from the
    forward pass moves each free value node by exactly sqrt(2 gamma T) xi."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="mcpc", loss_fn=F.cross_entropy)
    hidden = [v for v in pcm.plan.vertices if v.kind != "output"][0]
    gamma, temp = 0.04, 2.0
    r = pccompile.MCPC(steps=1, gamma=gamma, temperature=temp, seed=7, output="free")
    from pccompile.engine import feed_forward
    from pccompile.engine.inference import run_inference
    from pccompile.rules.il import setup_of

    plan = pcm.plan
    ff = feed_forward(plan, (x,), None, lambda o, t: torch.zeros(()), record_state=True)
    shape = ff.flat[hidden.vid][0].shape
    xi = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    scale = math.sqrt(2 * gamma * temp)

    def noise(t):
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * scale

    run = run_inference(plan, ff, None, None, setup_of(r, 1), noise=noise)
    moved = run.values[hidden.name][0] - ff.flat[hidden.vid][0]
    assert torch.allclose(moved, xi * scale, rtol=0, atol=1e-15)


def _deep_chain(depth: int, dtype):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(8, 8), nn.Tanh()]
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), *layers, nn.Linear(8, 3)).to(dtype)
    return net, torch.randn(6, 4, dtype=dtype), torch.tensor([0, 1, 2, 0, 1, 2])


def test_numerically_unreached_vertices_are_named():
    """A deep float32 chain under IL's defaults: the error reaches the first layers by the graph
    (steps = depth + 1) but arrives below float32's resolution: their error stays exactly zero,
    their gradient is zero, and learn says so (naming them, suggesting float64/ePC/muPC). ePC on
    the same network brings a non-zero gradient to every parameter and does not warn."""
    net, x, y = _deep_chain(24, torch.float32)
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    first = [v.name for v in pcm.plan.vertices if v.kind != "output"][0]
    with pytest.warns(pccompile.NumericallyUnreachedWarning, match="epc") as caught:
        report = pcm.learn(x, target=y, steps=pcm.plan.depth + 1)
    assert not report.unreached  # structurally reached ...
    assert first in report.silent  # ... numerically not
    assert first in str(caught[0].message) and any(first in m for m in report.warnings)
    zero = {n for n, p in pcm.named_parameters() if float(p.grad.abs().max()) == 0.0}
    assert zero  # the warning is about real zeros
    for p in pcm.parameters():
        p.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", pccompile.NumericallyUnreachedWarning)
        report = pcm.learn(x, target=y, rule="epc", steps=3)
    assert not report.silent
    assert all(float(p.grad.abs().max()) > 0 for p in pcm.parameters())


def test_divergence_warns_with_the_step():
    """A step size too large for the energy's curvature makes the energy rise: learn warns
    (DivergenceWarning, naming the step and suggesting a smaller gamma) and records the step;
    a small gamma descends without a warning."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    with pytest.warns(pccompile.DivergenceWarning, match="smaller gamma"):
        report = pcm.learn(x, target=y, gamma=1.0, steps=10)
    s = report.diverged_at
    assert s is not None and report.energy[s] > report.energy[s - 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", pccompile.DivergenceWarning)
        report = pcm.learn(x, target=y, gamma=0.01, steps=10)
    assert report.diverged_at is None
    assert all(b <= a for a, b in zip(report.energy, report.energy[1:]))


def test_epc_energy_falls_and_states_carry_the_errors():
    """Under small error steps ePC's energy falls, and the final states are the feed-forward
    pass re-run with the errors added (z_v = g_v(z_parents) + eps_v)."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="epc", loss_fn=F.cross_entropy)
    from pccompile.engine import feed_forward
    from pccompile.engine.inference import run_error_inference
    from pccompile.rules.il import setup_of

    plan = pcm.plan
    ff = feed_forward(plan, (x,), y, F.cross_entropy, record_state=True)
    z, eps, energy = run_error_inference(plan, ff, y, F.cross_entropy, setup_of(pccompile.EPC(), 8))
    assert all(b < a for a, b in zip(energy, energy[1:]))
    hidden = [v.vid for v in plan.vertices if v.vid in z]  # layer_0, layer_2 in graph order
    assert len(hidden) == 2
    h = x
    for vid, linear in zip(hidden, (net[0], net[2])):
        expect = torch.tanh(linear(h)) + eps[vid][0]
        assert torch.allclose(z[vid][0], expect, rtol=0, atol=1e-15)
        assert float(eps[vid][0].abs().max()) > 1e-6  # the errors moved
        h = z[vid][0]


# -------------------------------------------------------------- muPC
class ResMLP(nn.Module):
    """x -> W_in -> [h + W_l relu(h)] x L -> W_out, the network of muPC's equations."""

    def __init__(self, d_in=5, width=7, blocks=3, classes=3):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk(torch.relu(h))
        return self.out(h)


def _mupc_equations(m: ResMLP, x, L: int) -> torch.Tensor:
    """muPC (Innocenti et al. 2025): a_1 = 1/sqrt(D), residual a_l = 1/sqrt(N L), readout 1/N."""
    d, n = m.inp.in_features, m.inp.out_features
    h = x @ m.inp.weight.T / math.sqrt(d)
    for blk in m.blocks:
        h = h + torch.relu(h) @ blk.weight.T / math.sqrt(n * L)
    return h @ m.out.weight.T / n


@pytest.mark.parametrize("granularity", ["layer", "op"])
def test_mupc_network_is_the_scaled_network_of_the_equations(granularity):
    torch.manual_seed(0)
    m = ResMLP(blocks=4).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    pcm = pccompile.convert(
        m, x, rule="il", parametrization="mupc", granularity=granularity, loss_fn=F.cross_entropy
    )
    out = pcm(x)
    assert (out - _mupc_equations(m, x, 4)).abs().max() < 1e-12 * out.abs().max()
    # falsifying variants: the unscaled network, and L off by one, differ
    assert (m(x) - out).abs().max() > 1e-3
    assert (_mupc_equations(m, x, 3) - out).abs().max() > 1e-6
    # weights re-drawn N(0, 1) once, biases zero; the table names every edge's kind
    w = torch.cat([p.detach().flatten() for n, p in m.named_parameters() if n.endswith("weight")])
    assert abs(float(w.std()) - 1.0) < 0.2
    assert all(float(p.detach().abs().max()) == 0 for n, p in m.named_parameters() if "bias" in n)
    kinds = sorted(k for _, k, _ in pcm.plan.gm.meta["pc_mupc"].values())
    assert kinds == ["branch"] * 4 + ["hidden", "readout"]
    before = [p.detach().clone() for p in m.parameters()]
    pcm.eval()
    pcm(x)  # a second plan (eval mode) scales, and re-draws nothing
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    pcm.learn(x, target=torch.tensor([0, 1, 2, 0, 1, 2]), steps=8)  # trains as any network


def test_mupc_refuses_unknown_parametrizations():
    with pytest.raises(pccompile.ConfigError, match="mupc"):
        pccompile.convert(ResMLP(), torch.randn(2, 5), rule="il", parametrization="mup")


@pytest.mark.slow
def test_resnet18_il_names_the_numerically_unreached_stem_and_epc_reaches_it():
    """torchvision resnet18 (10 classes, 8x3x32x32, train mode) under IL's defaults in float32:
    the stem's error stays exactly zero (conv1, bn1, layer1.0 get a zero gradient) and learn
    names them; ePC on the same model gives every parameter a non-zero gradient."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    pcm = pccompile.convert(model, x, rule="il", loss_fn=F.cross_entropy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = pcm.learn(x, target=y)
    silent = [w for w in caught if issubclass(w.category, pccompile.NumericallyUnreachedWarning)]
    assert len(silent) == 1 and report.silent and not report.unreached
    text = str(silent[0].message)
    for name in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight"):
        assert name in text
        assert float(dict(pcm.named_parameters())[name].grad.abs().max()) == 0.0
    assert "float64" in text and "epc" in text and "mupc" in text
    # and the energy rises part-way (gamma = 0.1 is too large for this net): said, not silent
    rise = report.diverged_at
    assert rise is not None and report.energy[rise] > report.energy[rise - 1]
    assert any(issubclass(w.category, pccompile.DivergenceWarning) for w in caught)
    for p in pcm.parameters():
        p.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", pccompile.NumericallyUnreachedWarning)
        report = pcm.learn(x, target=y, rule="epc", steps=5)
    zero = [n for n, p in pcm.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not zero, zero


# -------------------------------------------------------------- loops equal to their definition
class DropInLayer(nn.Module):
    """A functional dropout inside a layer vertex: random in eval mode unless it reads the flag."""

    def __init__(self, follow_mode: bool):
        super().__init__()
        self.a, self.b, self.follow = nn.Linear(6, 8), nn.Linear(8, 3), follow_mode

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = F.dropout(h, 0.3, training=self.training) if self.follow else F.dropout(h, 0.3)
        return self.b(h)


def _eager_and_compiled(pcm, x, y, rule):
    out = []
    for compiled in (False, "aot_eager"):
        for p in pcm.parameters():
            p.grad = None
        torch.manual_seed(1)
        report = pcm.learn(x, target=y, rule=rule(compiled))
        grads = {n: p.grad.clone() for n, p in pcm.named_parameters() if p.grad is not None}
        out.append((grads, report, torch.get_rng_state()))
    return out


def test_compiled_il_refuses_a_functional_dropout_that_draws_in_eval_mode():
    """The registry's one purity classification, op by op inside the layer: F.dropout(h, p)
    draws in eval mode (it ignores the module's mode) and the compiled loop cannot replay it;
    with training=self.training it is the identity in eval mode and compiles, equal to the
    eager loop (float64, 1e-12) with the same RNG state afterwards."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    drawing = DropInLayer(follow_mode=False).double().eval()
    pcm = pccompile.convert(drawing, x, rule="il", loss_fn=F.cross_entropy)
    with pytest.raises(pccompile.ConfigError, match="random draws"):
        pcm.learn(x, target=y, rule=pccompile.IL(steps=4, compile="aot_eager"))
    pure = DropInLayer(follow_mode=True).double().eval()
    pcm = pccompile.convert(pure, x, rule="il", loss_fn=F.cross_entropy)
    (ge, re_, rng_e), (gc, rc, rng_c) = _eager_and_compiled(
        pcm, x, y, lambda c: pccompile.IL(steps=4, compile=c)
    )
    assert torch.equal(rng_e, rng_c)
    assert max(rel_err(gc[n], ge[n]) for n in ge) < 1e-12
    assert max(abs(a - b) for a, b in zip(re_.energy, rc.energy)) < 1e-12 * re_.energy[0]


class Transformed(nn.Module):
    """A parameter transform: the weight used is W0 + dW (delta) or W0 + A @ B (LoRA-style)."""

    def __init__(self, lora: bool):
        super().__init__()
        self.lora = lora
        self.w0 = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.dw = nn.Parameter(torch.zeros(8, 6))
        self.A, self.B = (
            nn.Parameter(torch.randn(8, 2) * 0.1),
            nn.Parameter(torch.randn(2, 6) * 0.1),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        w = self.w0 + (self.A @ self.B if self.lora else self.dw)
        return self.head(torch.tanh(F.linear(x, w)))


@pytest.mark.parametrize("lora", [False, True])
def test_eager_ipc_with_moving_weights_reads_current_parameter_transforms(lora):
    """iPC moves the parameters inside inference; the vertices read W0 + dW (or W0 + A @ B)
    recomputed from the current parameters, as the compiled loop does (float64, 1e-12)."""
    torch.manual_seed(0)
    model = Transformed(lora).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    pcm = pccompile.convert(model, x, rule="ipc", loss_fn=F.cross_entropy)
    after = []
    for compiled in (False, "aot_eager"):
        model.load_state_dict(start)
        pcm.learn(x, target=y, rule=pccompile.IPC(steps=5, lr=0.5, compile=compiled))
        after.append({k: v.clone() for k, v in model.state_dict().items()})
    moved = "A" if lora else "dw"
    assert rel_err(after[0][moved], start[moved], floor=1.0) > 1e-3  # the transform moved
    assert max(rel_err(after[0][k], after[1][k]) for k in start) < 1e-12


def test_ipc_optimizer_keeps_the_callers_accumulated_grads():
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="ipc", loss_fn=F.cross_entropy)
    for p in pcm.parameters():
        p.grad = torch.full_like(p, 0.25)
    opt = torch.optim.SGD(pcm.parameters(), lr=0.01)
    before = [p.detach().clone() for p in pcm.parameters()]
    pcm.learn(x, target=y, rule=pccompile.IPC(steps=3, optimizer=opt))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in pcm.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, pcm.parameters()))


def test_compiled_loops_are_cached_by_the_losss_code_and_constants():
    """A fresh lambda per step reuses the compiled loop; a different constant compiles anew."""
    from pccompile.engine.compiled import _CACHE, loss_key

    def make(scale):
        return lambda o, t: scale * F.cross_entropy(o, t)

    assert loss_key(make(1.0)) == loss_key(make(1.0))
    assert loss_key(make(1.0)) != loss_key(make(2.0))
    assert loss_key(nn.CrossEntropyLoss()) == loss_key(nn.CrossEntropyLoss())
    assert loss_key(nn.CrossEntropyLoss()) != loss_key(nn.CrossEntropyLoss(label_smoothing=0.1))
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    rule = pccompile.IL(steps=2, compile="aot_eager")
    for _ in range(2):
        pcm.learn(x, target=y, loss_fn=make(1.0), rule=rule)
    assert len(_CACHE[pcm.plan]) == 1
    pcm.learn(x, target=y, loss_fn=make(2.0), rule=rule)
    assert len(_CACHE[pcm.plan]) == 2


# -------------------------------------------------------------- researcher options
def test_init_options_set_where_the_value_nodes_start():
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    first = [v.name for v in pcm.plan.vertices if v.kind != "output"][0]
    mu = torch.tanh(net[0](x)).detach()
    for init, start in (("zeros", torch.zeros_like(mu)), (lambda n, t: t + 1.0, mu + 1.0)):
        r = pcm.learn(x, target=y, steps=2, init=init, trace=True)
        want = 0.5 * float(((start - mu) ** 2).sum())
        assert r.trace.vertex_energy[first][0] == pytest.approx(want, rel=1e-12)
    torch.manual_seed(3)
    a = pcm.learn(x, target=y, steps=2, init="normal", trace=True).trace.vertex_energy[first][0]
    torch.manual_seed(3)
    b = pcm.learn(x, target=y, steps=2, init="normal", trace=True).trace.vertex_energy[first][0]
    assert a == b and a > 0
    with pytest.raises(pccompile.ConfigError, match="init"):
        pccompile.IL(init="ones")


def test_tol_stops_on_convergence_and_reads_the_weights_there():
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    g_tol, r = _grads(pcm, x, y, F.cross_entropy, "il", steps=2000, gamma=0.5, tol=1e-9)
    assert 5 < r.steps < 2000 and len(r.energy) == r.steps + 1
    g_fixed, _ = _grads(pcm, x, y, F.cross_entropy, "il", steps=r.steps, gamma=0.5)
    assert all(torch.equal(g_tol[n], g_fixed[n]) for n in g_fixed)


def test_per_vertex_steps_and_gamma():
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    from pccompile.engine import feed_forward
    from pccompile.engine.inference import Setup, run_inference

    plan = pcm.plan
    names = [v.name for v in plan.vertices if v.kind != "output"]
    ff = feed_forward(plan, (x,), y, F.cross_entropy, record_state=True)

    def values(**kw):
        return run_inference(plan, ff, y, F.cross_entropy, Setup(steps=3, **kw)).values

    held = values(vertex_steps={names[0]: 0})
    assert torch.equal(held[names[0]][0], ff.flat[plan.vertices[0].vid][0])
    own, slow = values(gamma=0.1, vertex_gamma={names[0]: 0.2}), values(gamma=0.1)
    assert not torch.equal(own[names[0]][0], slow[names[0]][0])
    one = run_inference(plan, ff, y, F.cross_entropy, Setup(steps=1, vertex_gamma={names[0]: 0.2}))
    ref = run_inference(plan, ff, y, F.cross_entropy, Setup(steps=1, gamma=0.2))
    assert torch.equal(one.values[names[0]][0], ref.values[names[0]][0])
    with pytest.raises(pccompile.ConfigError, match="no vertex named"):
        pcm.learn(x, target=y, vertex_steps={"nope": 1})


def test_step_sizes_above_one_are_warned_not_refused():
    with pytest.warns(pccompile.LargeStepWarning, match="above 1"):
        cfg = pccompile.IL(gamma=1.5)
    assert cfg.gamma == 1.5
    with pytest.raises(pccompile.ConfigError, match="> 0"):
        pccompile.IL(gamma=0.0)


def test_learn_with_free_inputs_trains_on_inferred_inputs():
    """Unsupervised / generative training: the input is a free value node during inference
    (starting at the given batch), and the weights learn from the state it reaches."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    keep = x.clone()
    clamped, _ = _grads(pcm, x, y, F.cross_entropy, "il", steps=5)
    free, report = _grads(pcm, x, y, F.cross_entropy, "il", steps=5, free_inputs=(0,))
    assert torch.equal(x, keep)  # the caller's batch is not moved
    assert any(not torch.equal(clamped[n], free[n]) for n in free)
    assert report.energy[-1] < report.energy[0]
    with pytest.raises(pccompile.ConfigError, match="input position"):
        pcm.learn(x, target=y, free_inputs=(3,))


def test_a_custom_inference_loop_on_the_energy_function_reproduces_il():
    """The documented hook: plain steps of gamma on energy_function's F, then learn(), give
    IL's gradients (float64, 1e-12); the loop can be anything (here also Adam, which differs)."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    il, _ = _grads(pcm, x, y, F.cross_entropy, "il", steps=6, gamma=0.2)
    for p in pcm.parameters():
        p.grad = None
    ef = pccompile.energy_function(pcm, x, target=y)
    xs = ef.start()
    energies = []
    for _ in range(6):
        grads = ef.grad(xs)
        energies.append(float(ef(xs).detach()))
        with torch.no_grad():
            for name in xs:
                for t, g in zip(xs[name], grads[name]):
                    t -= 0.2 * g
    ef.learn(xs)
    mine = {n: p.grad for n, p in pcm.named_parameters()}
    assert max(rel_err(mine[n], il[n]) for n in il) < 1e-12
    assert all(b < a for a, b in zip(energies, energies[1:]))


def test_trace_captions_and_plot_are_keyed_on_the_rule(tmp_path):
    """A rise under IL is divergence (the caption says so), under Z-IL the front adding terms;
    the plot's row 0 is the output's loss term."""
    pytest.importorskip("matplotlib")
    from pccompile.plot import _level_grid, plot_trace, trace_caption

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    with pytest.warns(pccompile.DivergenceWarning):
        tr = pcm.learn(x, target=y, gamma=1.0, steps=10, trace=True).trace
    text = trace_caption(tr)
    assert tr.rule == "il" and "diverges" in text and "Z-IL reads" not in text
    assert plot_trace(tr, tmp_path / "il.png").stat().st_size > 0
    calm = pcm.learn(x, target=y, gamma=0.01, steps=10, trace=True).trace
    grid, _ = _level_grid(calm)
    assert np.isfinite(grid[0]).all()  # the output row: its loss term at every step
    assert "diverges" not in trace_caption(calm)
    zil = pccompile.convert(net, x, rule="zil", loss_fn=F.cross_entropy)
    text = trace_caption(zil.learn(x, target=y, trace=True).trace)
    assert "diverges" not in text


@pytest.mark.parametrize("name", ["residual", pytest.param("concat", marks=pytest.mark.slow)])
def test_compiled_epc_equals_the_eager_loop(name):
    """EPC(compile=...) runs the error steps and the local weight update as one compiled
    function: the same gradients and energies as the eager loop (float64, 1e-12)."""
    model, x, y, loss_fn = _graph(name)
    pcm = pccompile.convert(model, x, rule="epc", loss_fn=loss_fn)
    out = []
    for compiled in (False, "aot_eager"):
        g, r = _grads(pcm, x, y, loss_fn, pccompile.EPC(steps=4, gamma=0.2, compile=compiled))
        out.append((g, r))
    (ge, re_), (gc, rc) = out
    assert max(rel_err(gc[n], ge[n]) for n in ge) < 1e-12
    assert max(abs(a - b) for a, b in zip(re_.energy, rc.energy)) < 1e-12 * re_.energy[0]


def test_compiled_centred_nudging_equals_the_eager_loop():
    """Each nudging phase is a compiled loop of its own (the loss weight +beta, then -beta)."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="il", loss_fn=F.cross_entropy)
    out = []
    for compiled in (False, "aot_eager"):
        rule = pccompile.IL(steps=10, beta=0.1, nudging="centered", compile=compiled)
        out.append(_grads(pcm, x, y, F.cross_entropy, rule)[0])
    assert max(rel_err(out[1][n], out[0][n]) for n in out[0]) < 1e-12


def test_compiled_mcpc_equals_the_eager_loop():
    """MCPC(compile=...): the noise is drawn before the loop in the eager loop's order, so the
    compiled loop gives the same gradients (float64, 1e-12)."""
    net, x, y = _mlp()
    pcm = pccompile.convert(net, x, rule="mcpc", loss_fn=F.cross_entropy)
    out = []
    for compiled in (False, "aot_eager"):
        rule = pccompile.MCPC(steps=6, seed=11, compile=compiled)
        out.append(_grads(pcm, x, y, F.cross_entropy, rule))
    (ge, re_), (gc, rc) = out
    assert max(rel_err(gc[n], ge[n]) for n in ge) < 1e-12
    assert max(abs(a - b) for a, b in zip(re_.energy, rc.energy)) < 1e-12 * re_.energy[0]
