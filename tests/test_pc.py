"""Approximate PC as researchers use it: layer vertices, the energy convention, output
formulations, clamping, precisions and energies, generative inference, value-node optimisers and
the unreached-parameter warning (docs/pc.md)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import F64_TOL

import pccompile
from pccompile import IL, IPC, UnreachedWarning
from pccompile.data import digits
from pccompile.energies import Gaussian, bernoulli, cross_entropy, squared_error
from pccompile.testing import Habits, train_against_bp


def mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 5)
    )
    return net.to(dtype)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
    ).double()


def batch(n=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------- granularity
def test_layer_granularity_groups_a_parametric_op_with_the_ops_after_it():
    pcm = pccompile.convert(mlp(), batch()[0], rule="il")
    names = [v.name for v in pcm.plan.vertices]
    assert names == ["1", "3", "5", "output"]  # flatten joins the first layer
    assert pcm.capture_options.granularity == "layer" and pcm.capture_options.level is False
    ops = pccompile.convert(mlp(), batch()[0], rule="il", granularity="op")
    assert len(ops.plan.vertices) == 7
    x = batch()[0]
    assert torch.equal(pcm(x), mlp()(x))  # the grouped graph computes what the model computes


def test_layer_granularity_keeps_joins_and_stateful_members():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    pcm = pccompile.convert(model, x, rule="il")
    kinds = {v.name: v.rule.kind for v in pcm.plan.vertices if v.rule is not None}
    assert kinds["conv1"] == "stateful"  # conv1 + bn1 + relu + maxpool: BN protects buffers
    assert sum(1 for v in pcm.plan.vertices if v.kind == "op") < 40  # 60 op vertices at "op"
    model.eval()
    assert torch.equal(pcm.eval()(x), model(x))


@pytest.mark.parametrize("mode", ["efficient", "faithful"])
def test_zil_is_exact_on_layer_vertices_over_training_steps(mode):
    """A layer vertex is one function of its parents: Z-IL stays BP on it, in both schedules,
    over 3 SGD steps with momentum, accumulation, clipping and set_to_none=False."""
    model = cnn()
    data = [((batch(seed=s)[0],), batch(seed=s)[1]) for s in range(2)]
    habits = Habits(steps=3, accumulate=2, clip=1.0, momentum=0.9, set_to_none=False)
    rep = train_against_bp(
        model,
        data,
        F.cross_entropy,
        "zil",
        habits=habits,
        mode=mode,
        convert_options={"granularity": "layer"},
    )
    assert rep.ok(F64_TOL), rep.problems(F64_TOL)


def test_granularity_is_validated():
    with pytest.raises(pccompile.ConfigError, match="granularity"):
        pccompile.convert(mlp(), batch()[0], granularity="block")


# ------------------------------------------------------------------------- conventions
def test_il_at_zero_steps_gives_bp_for_the_output_layer_and_warns_for_the_rest():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    with pytest.warns(UnreachedWarning, match="1, 3"):
        rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy, steps=0)
    assert rep.unreached == ["1", "3"]
    pc = grads(model)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    bp = grads(model)
    assert all(torch.count_nonzero(g) == 0 for g in pc[:4])
    for a, b in zip(pc[4:], bp[4:]):  # output layer: dF/dtheta / B = dL/dtheta exactly
        assert torch.allclose(a, b, rtol=F64_TOL, atol=0)


@pytest.mark.parametrize("rule", ["il", "ipc"])
def test_gradients_and_gamma_do_not_depend_on_the_batch_size(rule):
    """F sums per-sample energies; p.grad = dF/dtheta / B. The batch repeated 3 times gives the
    same value-node dynamics per sample and the same gradient (iPC's lr means the same)."""
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule=rule)
    pcm.learn(x, target=y, loss_fn=F.cross_entropy, steps=6, gamma=0.2)
    one = grads(model)
    model.zero_grad()
    x3, y3 = x.repeat(3, 1, 1, 1), y.repeat(3)
    r3 = pcm.learn(x3, target=y3, loss_fn=F.cross_entropy, steps=6, gamma=0.2)
    three = grads(model)
    for a, b in zip(one, three):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    r1 = pcm.learn(x, target=y, loss_fn=F.cross_entropy, steps=6, gamma=0.2)
    assert r3.energy[-1] == pytest.approx(3 * r1.energy[-1], rel=1e-10)


def test_output_formulations_clamped_and_free():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    clamp = pcm.infer(x, target=y, loss_fn=F.cross_entropy, steps=5)
    free = pcm.infer(x, target=y, loss_fn=F.cross_entropy, steps=5, output="free")
    assert "5" not in clamp.values and "5" in free.values  # free: an output value node
    assert (
        clamp.energy[0] == free.energy[0] == pytest.approx(6 * F.cross_entropy(model(x), y).item())
    )
    # a free output node absorbs part of the error: its hidden nodes move less
    moved = lambda r: (r.values["3"][0] - model[:5](x)).norm()
    assert moved(free) < moved(clamp)


def test_unreached_parameters_warn_with_op_vertices_and_not_with_layers():
    model = mlp()
    x, y = batch()
    ops = pccompile.convert(model, x, rule="il", granularity="op")
    with pytest.warns(UnreachedWarning) as rec:
        rep = ops.learn(x, target=y, loss_fn=F.cross_entropy, steps=3)
    assert rep.unreached and "zero gradient" in str(rec[0].message)
    assert torch.count_nonzero(model[1].weight.grad) == 0  # the first Linear: truly unreached
    model.zero_grad()
    layers = pccompile.convert(model, x, rule="il")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = layers.learn(x, target=y, loss_fn=F.cross_entropy, steps=3)
    assert rep.unreached == [] and torch.count_nonzero(model[1].weight.grad) > 0


# ------------------------------------------------------------------ clamping, precision
def test_partial_clamping_holds_a_vertex_and_its_error_drives_its_parents():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    held = torch.full((6, 12), 0.5, dtype=torch.float64)
    r = pcm.infer(x, clamp={"3": held}, steps=8)  # no target: only the clamp
    assert torch.equal(r.values["3"][0], held)
    mu = model[:5](x)
    assert r.energy[0] == pytest.approx(squared_error(held, mu).item(), rel=1e-12)
    assert r.energy[-1] < r.energy[0]  # vertex "1" moved toward explaining the clamp
    # learning with a clamp: vertex "3"'s own weights learn from (held - mu) at T = 0
    model.zero_grad()
    with pytest.warns(UnreachedWarning, match="1"):  # its error arrives at step 1
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, steps=0, clamp={"3": held})
    lin = model[3]
    h = model[:3](x).detach()
    pre = h @ lin.weight.T + lin.bias
    eps = (held - torch.tanh(pre)) * (1 - torch.tanh(pre) ** 2)
    assert torch.allclose(lin.weight.grad, -(eps.T @ h) / 6, rtol=1e-12, atol=0)
    with pytest.raises(pccompile.ConfigError, match="no vertex named"):
        pcm.infer(x, clamp={"nope": held})
    with pytest.raises(pccompile.InputError, match="shapes"):
        pcm.infer(x, clamp={"3": held[:, :3]})
    with pytest.raises(pccompile.ConfigError, match="clamp="):
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule="zil", clamp={"3": held})


def test_precision_scales_a_vertex_term_and_equals_a_gaussian_of_that_variance():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il", loss_fn=F.cross_entropy)
    base = pcm.infer(x, target=y, steps=3)
    prec = pcm.infer(x, target=y, steps=3, precision={"3": 4.0})
    gauss = pcm.infer(x, target=y, steps=3, energies={"3": Gaussian(0.25)})
    assert base.energy[0] == prec.energy[0]  # every hidden error is zero at the start
    assert prec.energy[1] != base.energy[1]
    # same gradients: the Gaussian differs by the constant 1/2 log var per element
    const = 0.5 * torch.log(torch.tensor(0.25, dtype=torch.float64)).item() * 6 * 12
    for a, b in zip(prec.energy[1:], gauss.energy[1:]):
        assert b == pytest.approx(a + const, rel=1e-12)
    for k in prec.values:
        assert torch.allclose(prec.values[k][0], gauss.values[k][0], rtol=1e-12, atol=1e-14)
    with pytest.raises(pccompile.ConfigError, match="precision"):
        pcm.infer(x, target=y, precision={"3": -1.0})


def test_a_learned_variance_gets_its_local_gradient():
    model = mlp()
    x, y = batch()
    g = Gaussian(2.0, learn=True).double()
    pcm = pccompile.convert(model, x, rule="il")
    rule = IL(steps=4, energies={"3": g})
    pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule)
    assert g.log_var.grad is not None and g.log_var.grad.shape == ()
    # d/dlogvar of sum 1/2 e^2 e^-lv + 1/2 lv, divided by B, at the final errors
    r = pcm.infer(x, target=y, loss_fn=F.cross_entropy, steps=4, energies={"3": g})
    e = r.values["3"][0] - torch.tanh(model[3](r.values["1"][0]))
    want = (0.5 * (-(e * e) / 2.0 + 1.0)).sum() / 6
    assert g.log_var.grad.item() == pytest.approx(want.item(), rel=1e-10)


@pytest.mark.parametrize("energy", [cross_entropy, bernoulli])
def test_custom_energies_drive_inference(energy):
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    soft = torch.softmax(torch.randn(6, 12, dtype=torch.float64), 1)
    r = pcm.infer(x, clamp={"3": soft}, energies={"3": energy}, steps=10)
    mu = model[:5](x)
    assert r.energy[0] == pytest.approx(energy(soft, mu).item(), rel=1e-12)
    assert r.energy[-1] < r.energy[0]


# -------------------------------------------------------------- value-node optimisers
def test_value_optimizer_sgd_equals_plain_steps_and_adam_differs():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il", loss_fn=F.cross_entropy)
    plain = pcm.infer(x, target=y, steps=6, gamma=0.2)
    sgd = pcm.infer(x, target=y, steps=6, value_optimizer=lambda xs: torch.optim.SGD(xs, lr=0.2))
    adam = pcm.infer(x, target=y, steps=6, value_optimizer=lambda xs: torch.optim.Adam(xs, lr=0.05))
    assert plain.energy == sgd.energy
    assert all(torch.equal(plain.values[k][0], sgd.values[k][0]) for k in plain.values)
    assert adam.energy != plain.energy and adam.energy[-1] < adam.energy[0]


def test_test_time_inference_without_a_clamp_is_the_forward_pass():
    model = mlp()
    x, _ = batch()
    pcm = pccompile.convert(model, x, rule="il")
    r = pcm.infer(x, steps=5)
    assert r.energy == [0.0] * 6
    assert torch.equal(r.output, model(x))


# --------------------------------------------------------------- generative inference
def test_generative_inference_draws_the_clamped_class():
    """Train the digits MLP with IL; clamp the output to a class and infer the input from a
    blank image: the trained classifier labels the generated inputs as the clamped class."""
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = digits(test_fraction=0.25, stratify=True)
    from benchmarks.pc_accuracy import mlp as digits_mlp  # the table's MLP, 64-128-128-10

    torch.manual_seed(0)
    net = digits_mlp()
    pcm = pccompile.convert(net, xtr[:64], rule=IL(steps=5), loss_fn=F.cross_entropy)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(len(ytr), generator=g)
        for k in range(0, len(perm), 64):
            i = perm[k : k + 64]
            opt.zero_grad()
            pcm.learn(xtr[i], target=ytr[i])
            opt.step()
    net.eval()
    assert (net(xte).argmax(1) == yte).float().mean() > 0.93
    labels = torch.arange(10).repeat(5)
    r = pcm.infer(torch.zeros(50, 1, 8, 8), target=labels, free_inputs=(0,), steps=100)
    gen = r.inputs[0]
    assert r.energy[-1] < 0.2 * r.energy[0]
    assert (net(gen).argmax(1) == labels).float().mean() >= 0.8
    # recognisable: each class's generated mean is closest (cosine) to that class's data mean
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)]).flatten(1)
    made = torch.stack([gen[labels == c].mean(0) for c in range(10)]).flatten(1)
    cos = F.cosine_similarity(made[:, None], means[None], dim=2)
    assert (cos.argmax(1) == torch.arange(10)).float().mean() >= 0.8


# -------------------------------------------------------------- accuracy of the table
def _acc(model, rule, steps, epochs, **kw):
    from benchmarks.pc_accuracy import train

    data = digits(test_fraction=0.25, stratify=True, seed=0)
    return train(model, rule, steps, epochs=epochs, seed=0, ipc_lr=0.01, data=data, **kw)


def test_il_reaches_the_peers_accuracy_on_the_digits_mlp_at_five_steps():
    r = _acc("mlp", "il", 5, epochs=20)
    assert r["best"] >= 0.95, r  # measured 0.973 (seed 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,rule,steps,target",
    [("mlp", "il", 20, 0.96), ("cnn", "il", 20, 0.95), ("mlp", "ipc", 20, 0.94)],
)
def test_approximate_pc_reaches_the_peers_accuracy(model, rule, steps, target):
    r = _acc(model, rule, steps, epochs=20)
    assert r["best"] >= target, r


# -------------------------------------------------------------------- compiled loop
def _run(pcm, model, x, y, rule):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad()
    rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule)
    out = [p.grad.clone() if p.grad is not None else p.detach().clone() for p in model.parameters()]
    model.load_state_dict(state)
    return rep, out


@pytest.mark.parametrize(
    "rule",
    [IL(steps=7, gamma=0.2), IL(steps=3, output="free"), IPC(steps=7, lr=0.05)],
    ids=["il", "il-free-output", "ipc-lr"],
)
def test_compiled_loop_equals_the_eager_loop(rule):
    """One torch.compile'd function for the whole loop (aot_eager here: the same graph,
    compiled in seconds; inductor in the slow test) gives the eager loop's numbers: IL's
    gradients, iPC's updated weights, the energy at every step."""
    import dataclasses

    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    eager, a = _run(pcm, model, x, y, rule)
    fast, b = _run(pcm, model, x, y, dataclasses.replace(rule, compile="aot_eager"))
    assert fast.compile_seconds > 0
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-15)
    assert fast.energy == pytest.approx(eager.energy, rel=1e-13)
    again, c = _run(pcm, model, x, y, dataclasses.replace(rule, compile="aot_eager"))
    assert again.compile_seconds == 0.0  # cached: no recompilation for the same shapes
    assert all(torch.equal(u, v) for u, v in zip(b, c))


def test_compile_refuses_what_it_cannot_replay():
    model = cnn()  # train-mode BatchNorm and dropout: state replayed by the eager loop only
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    with pytest.raises(pccompile.ConfigError, match="compile=True: vertex '0'"):
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, compile="aot_eager")
    pcm = pccompile.convert(mlp(), x, rule="il")
    with pytest.raises(pccompile.ConfigError, match="per-vertex trace"):
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, compile="aot_eager", trace=True)
    with pytest.raises(pccompile.ConfigError, match="lr > 0"):
        IPC(compile=True)


@pytest.mark.slow
def test_inductor_compiled_loop_equals_the_eager_loop():
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    eager, a = _run(pcm, model, x, y, IL(steps=5))
    comp, b = _run(pcm, model, x, y, IL(steps=5, compile=True))
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-15)
    assert comp.energy == pytest.approx(eager.energy, rel=1e-13)


def test_compile_takes_eval_mode_batchnorm_and_dropout_as_pure():
    model = cnn().eval()  # running statistics read, dropout off: nothing to replay
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    eager, a = _run(pcm, model, x, y, IL(steps=4))
    comp, b = _run(pcm, model, x, y, IL(steps=4, compile="aot_eager"))
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-15)
    assert comp.energy == pytest.approx(eager.energy, rel=1e-13)


class _LSTMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(torch.tanh(out[:, -1]))


class _CellLoop(nn.Module):
    """A hand-written loop over nn.LSTMCell: the first step reads only an input slice."""

    def __init__(self):
        super().__init__()
        self.cell, self.head = nn.LSTMCell(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.head(state[0])


def _seqs():
    g = torch.Generator().manual_seed(2)
    return [((torch.randn(4, 5, 6, generator=g, dtype=torch.float64),), torch.randint(0, 3, (4,)))]


@pytest.mark.parametrize("mode", ["efficient", "faithful"])
@pytest.mark.parametrize("which", ["nn.LSTM", "LSTMCell loop"])
def test_layer_vertices_on_recurrent_models_keep_zil_equal_to_bptt(mode, which):
    """Layer vertices keep an nn.LSTM whole (one vertex, torch's fused sequence kernel); in a
    hand-written cell loop the first step's input slice joins the cell's vertex and the cell's
    tuple output is still read through data movement (regression: a dangling source)."""
    torch.manual_seed(0)
    model = (_LSTMHead() if which == "nn.LSTM" else _CellLoop()).double()
    data = _seqs()
    rep = train_against_bp(
        model,
        data,
        F.cross_entropy,
        "zil",
        habits=Habits(steps=2, accumulate=1),
        mode=mode,
        convert_options={"granularity": "layer"},
    )
    assert rep.ok(F64_TOL), rep.problems(F64_TOL)
    pcm = pccompile.convert(model, data[0][0][0], rule="il")
    if which == "nn.LSTM":
        assert "lstm" in [v.name for v in pcm.plan.vertices]  # not unrolled
    pcm.learn(*data[0][0], target=data[0][1], loss_fn=F.cross_entropy, steps=12)


def test_many_compiled_loops_in_one_process_do_not_hit_dynamos_recompile_limit():
    """Each (plan, setup, shape) is its own program with its own code object, so a sweep over
    T compiles each once instead of counting as recompilations of one function (limit 8)."""
    model = mlp()
    x, y = batch()
    pcm = pccompile.convert(model, x, rule="il")
    for steps in range(2, 13):  # from 2: the error reaches every layer
        rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=IL(steps=steps, compile="eager"))
        assert len(rep.energy) == steps + 1


def test_a_diverging_il_inference_warns_at_the_callers_line():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 5)
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(6)  # large weights: gamma = 1 inference oscillates and blows up
    x, y = torch.randn(6, 16, dtype=torch.float64), torch.randint(0, 5, (6,))
    pcm = pccompile.convert(net, x, rule="il")
    with pytest.warns(RuntimeWarning, match="energy became non-finite") as rec:
        rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy, steps=300, gamma=1.0)
    assert rec[0].filename == __file__
    assert not all(math.isfinite(e) for e in rep.energy)


@pytest.mark.parametrize("rule", ["il", "epc"])
def test_progress_bar_counts_every_inference_step_and_changes_nothing(rule, monkeypatch):
    """learn(progress=True): one tqdm bar per inference run, advanced once per step (0..T) by
    the loop's ON_STEP hook; the gradients are the ones without the bar, bitwise."""
    import tqdm.auto

    made = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n, self.closed = total, 0, False
            made.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 0])
    pcm = pccompile.convert(net, x, rule=rule, loss_fn=F.cross_entropy)
    pcm.learn(x, target=y, steps=7)
    plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    pcm.learn(x, target=y, steps=7, progress=True)
    assert [(b.total, b.n, b.closed) for b in made] == [(8, 8, True)]
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, net.parameters()))
    from pccompile.engine.inference import ON_STEP

    assert ON_STEP.get() is None  # the hook does not outlive the call
