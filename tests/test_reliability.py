"""Reliability: round trips, no hidden state, atomic learn steps, bad input, safe loading.

* Round trips: ``state_dict`` is the original's; save -> load into a fresh original -> same
  outputs; ``unconvert`` gives the trained plain module; ``deepcopy``/``pickle`` of a PCModule
  (after learning) learn independently of the original.
* No hidden state: after ``learn`` every rule leaves BatchNorm statistics, ``num_batches_tracked``
  and the global RNG exactly where ``bp`` leaves them, so rules can be swapped mid-training; a
  learn step that fails mid-inference leaves ``p.grad`` as it was.
* Bad input: clear errors before inference, or BP's behaviour where BP has one (frozen and
  shared parameters, models without parameters).
* Safe loading: every ``torch.load`` in the library passes ``weights_only=True``; a weights file
  that pickles code is refused by ``load_converted``.
* Saved models (``pccompile-converted/1``): ``save_converted`` -> ``load_converted`` gives the
  same forward, rule and graph; a missing manifest or an unknown/newer format is refused before
  anything runs; a failed save leaves no half-written directory.

Covered elsewhere (not repeated here): converting a PCModule again and most bad targets/inputs
(test_errors.py), ``require_exact=True`` (test_falsify.py), the CLI's ``--weights`` refusing a
malicious pickle (test_cli.py).
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import F64_TOL, assert_matches_bp, compare_to_bp

import pccompile
from pccompile import ConfigError, InputError
from pccompile.cli import main as cli_main
from pccompile.io import artifact
from pccompile.io.artifact import FORMAT, ArtifactError, load_converted, save_converted
from pccompile.modelspec import ModelSpecError, build_model, parse_spec
from pccompile.summary import graph_summary

D = torch.float64
FIXTURES = Path(__file__).parent / "fixtures"


class Net(nn.Module):
    """conv -> BatchNorm -> relu -> dropout -> linear: running statistics, a batch counter and
    random masks, plus a non-persistent buffer (in neither state_dict)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.register_buffer("offset", torch.full((3,), 0.1), persistent=False)

    def forward(self, x):
        h = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1)) + self.offset


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().double().train()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 2, 4, 4, generator=g, dtype=D), torch.randint(0, 3, (5,), generator=g)


def train(pcm, steps: int, rule: str = "zil", lr: float = 0.1) -> None:
    opt = torch.optim.SGD(pcm.parameters(), lr=lr, momentum=0.9)
    for k in range(steps):
        x, y = batch(k)
        opt.zero_grad()
        torch.manual_seed(100 + k)
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule)
        opt.step()


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None)
        or (a[k] is not None and b[k] is not None and torch.equal(a[k], b[k]))
        for k in a
    )


# ------------------------------------------------------------------------------ round trips
def test_state_dict_is_exactly_the_originals_after_training():
    model = net()
    pcm = pccompile.convert(model, batch()[0])
    train(pcm, 2)
    ours, theirs = pcm.state_dict(), model.state_dict()
    assert list(ours) == list(theirs) and "offset" not in ours
    assert int(ours["bn.num_batches_tracked"]) == 2
    for k, v in ours.items():
        assert v.data_ptr() == theirs[k].data_ptr(), k  # the same storage, not a copy


def test_save_load_into_a_fresh_original_gives_identical_outputs(tmp_path):
    pcm = pccompile.convert(net(), batch()[0])
    train(pcm, 3)
    torch.save(pcm.state_dict(), tmp_path / "w.pt")
    fresh = net(seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x, _ = batch(9)
    pcm.eval(), fresh.eval()
    assert torch.equal(fresh(x), pcm(x))
    # ... and into a fresh PCModule (the keys are the original's, so strict loading works)
    other = pccompile.convert(net(seed=8).eval(), x)
    other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert torch.equal(other(x), pcm(x))


def test_unconvert_returns_the_trained_plain_module():
    model = net()
    pcm = pccompile.convert(model, batch()[0])
    before = copy.deepcopy(model.state_dict())
    train(pcm, 3)
    plain = pccompile.unconvert(pcm)
    assert plain is model and type(plain) is Net and not isinstance(plain, pccompile.PCModule)
    assert any(not torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    x, _ = batch(9)
    assert torch.equal(plain.eval()(x), pcm.eval()(x))
    pccompile.convert(plain, x)  # the plain module converts again (a PCModule would not)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_of_a_trained_pcmodule_learn_independently(how):
    model = net()
    pcm = pccompile.convert(model, batch()[0])
    train(pcm, 2)
    x, y = batch(5)
    torch.manual_seed(0)
    pcm.learn(x, target=y, loss_fn=F.cross_entropy)  # leave grads in place on the original
    twin = copy.deepcopy(pcm) if how == "deepcopy" else pickle.loads(pickle.dumps(pcm))
    mine = {n: p.detach().clone() for n, p in pcm.named_parameters()}
    held = grads(pcm)

    assert all(p is not q for p, q in zip(twin.parameters(), pcm.parameters(), strict=True))
    assert all(p is q for p, q in zip(twin.parameters(), twin.original.parameters(), strict=True))
    assert all(torch.equal(p, mine[n]) for n, p in twin.named_parameters())
    assert torch.equal(twin.eval()(x), pcm.eval()(x))
    twin.train()
    assert_matches_bp(twin, (x,), y, F.cross_entropy)  # the copy is a working PCModule
    train(twin, 2)
    assert same(grads(pcm), held)  # its learning never touched the original's grads ...
    assert all(torch.equal(p, mine[n]) for n, p in pcm.named_parameters())  # ... or weights


# ------------------------------------------------------------------------------ hidden state
EXACT = {
    "zil": {},
    "zil-faithful": {"mode": "faithful"},
    "fpa": {},
    "fpa-faithful": {"mode": "faithful"},
}
APPROX = {"il": {"steps": 5}, "ipc-lr0": {"steps": 5, "lr": 0.0}}


@pytest.mark.parametrize("name", [*EXACT, *APPROX])
def test_learn_leaves_buffers_counter_and_rng_where_bp_does(name):
    """compare_to_bp asserts the buffers (BN statistics, num_batches_tracked) and the global RNG
    state after the rule equal those after bp; the dropout masks are BP's (same seed)."""
    opts = {**EXACT, **APPROX}[name]
    rule = name.split("-")[0]
    pcm = pccompile.convert(net(), batch()[0], rule=rule)  # il/ipc: layer vertices
    x, y = batch(3)
    counter = int(pcm.bn.num_batches_tracked)
    cmp = compare_to_bp(pcm, (x,), y, F.cross_entropy, rule, seed=4, **opts)
    assert int(pcm.bn.num_batches_tracked) == counter + 1  # one forward's worth, like bp
    if name in EXACT:
        assert cmp.worst[1] <= F64_TOL, cmp.worst


def test_eval_mode_learn_moves_no_buffer_and_draws_no_random_number():
    pcm = pccompile.convert(net().eval(), batch()[0])
    x, y = batch(3)
    state = copy.deepcopy(pcm.state_dict())
    rng = torch.get_rng_state()
    for rule, opts in [("zil", {}), ("zil", {"mode": "faithful"}), ("fpa", {}), ("il", {})]:
        pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule, **opts)
    assert all(torch.equal(v, state[k]) for k, v in pcm.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_alternating_bp_and_zil_steps_trains_exactly_like_bp():
    """Swap rules mid-training: bp, zil, bp, zil ... with SGD momentum ends where pure bp ends."""
    mixed = pccompile.convert(net(), batch()[0])
    pure = pccompile.convert(net(), batch()[0])
    opt_m = torch.optim.SGD(mixed.parameters(), lr=0.1, momentum=0.9)
    opt_p = torch.optim.SGD(pure.parameters(), lr=0.1, momentum=0.9)
    for k in range(6):
        x, y = batch(k)
        rng = []
        for pcm, opt, rule in ((mixed, opt_m, "bp" if k % 2 == 0 else "zil"), (pure, opt_p, "bp")):
            opt.zero_grad()
            torch.manual_seed(k)
            pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule)
            opt.step()
            rng.append(torch.get_rng_state())
        assert torch.equal(rng[0], rng[1])  # the same number of random draws either way
    for (k, a), b in zip(mixed.state_dict().items(), pure.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)
        else:
            assert torch.equal(a, b), k


class Boom(Exception):
    pass


def _fail_vjp_on(monkeypatch, n: int) -> None:
    """Make the n-th local VJP raise, wherever a rule imported ``vjp`` from the engine."""
    import pccompile.engine as engine
    import pccompile.rules.propagate as propagate
    import pccompile.rules.sync as sync

    calls = [0]

    def failing(real):
        def vjp(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise Boom(f"vjp call {n}")
            return real(*args, **kwargs)

        return vjp

    # vjp_pruned: the efficient schedules' fast path (rules/propagate.py)
    for mod in (engine, propagate, sync):
        for name in ("vjp", "vjp_pruned"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, failing(getattr(mod, name)))


def _fail_recompute_on(monkeypatch, n: int):
    """Make the n-th re-evaluation of a prediction during inference raise."""
    import pccompile.rules.sync as sync

    calls, real = [0], sync.call_vertex

    def call_vertex(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Boom(f"re-evaluation {n}")
        return real(*args, **kwargs)

    monkeypatch.setattr(sync, "call_vertex", call_vertex)


def _loss_failing_on(n: int):
    calls = [0]

    def loss(out, y):
        calls[0] += 1
        if calls[0] == n:
            raise Boom(f"loss call {n}")
        return F.cross_entropy(out, y)

    return loss


@pytest.mark.parametrize("start", ["none", "held"])
@pytest.mark.parametrize(
    "rule, opts, failure",
    [
        ("zil", {}, "vjp"),
        ("zil", {"mode": "faithful"}, "vjp"),
        # the loss runs once per learn; a prediction is re-evaluated at every step
        ("zil", {"mode": "faithful"}, "recompute"),
        ("fpa", {}, "vjp"),
        ("il", {"steps": 4}, "loss"),
        ("ipc", {"steps": 4}, "loss"),  # the fused step: the loss at every evaluation
    ],
    ids=["zil-vjp", "zil-faithful-vjp", "zil-faithful-recompute", "fpa-vjp", "il-loss", "ipc-loss"],
)
def test_failed_learn_step_leaves_grads_and_weights_untouched(
    monkeypatch, rule, opts, failure, start
):
    pcm = pccompile.convert(net().eval(), batch()[0])
    x, y = batch(3)
    for p in pcm.parameters():
        p.grad = None if start == "none" else torch.full_like(p, 0.5)
    before, weights = grads(pcm), copy.deepcopy(pcm.state_dict())
    loss_fn = F.cross_entropy
    if failure == "vjp":
        _fail_vjp_on(monkeypatch, 3)
    elif failure == "recompute":
        _fail_recompute_on(monkeypatch, 3)
    else:
        loss_fn = _loss_failing_on(2)  # the first call is the feed-forward pass
    with pytest.raises(Boom):
        pcm.learn(x, target=y, loss_fn=loss_fn, rule=rule, **opts)
    assert same(grads(pcm), before)
    assert all(torch.equal(v, weights[k]) for k, v in pcm.state_dict().items())


# ------------------------------------------------------------------------------ bad input
def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _xy(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 4, generator=g, dtype=D), torch.randn(n, 3, generator=g, dtype=D)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_target_is_refused_whatever_the_loss(value):
    pcm = pccompile.convert(_mlp(), _xy()[0])
    x, y = _xy()
    y[2, 1] = value
    custom = lambda out, t: ((out - t) ** 2).mean()  # not one of the losses check_target knows
    for rule in ("zil", "fpa", "il", "bp"):
        with pytest.raises(InputError, match="target contains NaN or Inf"):
            pcm.learn(x, target=y, loss_fn=custom, rule=rule)
    assert all(p.grad is None for p in pcm.parameters())


def test_input_that_requires_grad_is_refused_and_bp_remains_available():
    pcm = pccompile.convert(_mlp(), _xy()[0])
    x, y = _xy()
    x.requires_grad_()
    for rule in ("zil", "fpa", "il", "ipc"):
        with pytest.raises(InputError, match=r"Input 0 requires grad.*x\.detach\(\).*rule='bp'"):
            pcm.learn(x, target=y, loss_fn=F.mse_loss, rule=rule)
    assert all(p.grad is None for p in pcm.parameters()) and x.grad is None
    pcm.learn(x, target=y, loss_fn=F.mse_loss, rule="bp")  # the remedy the message names
    assert x.grad is not None


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lin = nn.Embedding(7, 4), nn.Linear(4, 3)

    def forward(self, x, ids, keep):
        h = torch.tanh(self.lin(x + self.emb(ids)))
        return h.masked_fill(~keep, 0.0)


def test_integer_and_boolean_inputs_are_clamped_and_exact():
    torch.manual_seed(0)
    model = Masked().double()
    x, ids = torch.randn(4, 4, dtype=D), torch.tensor([0, 3, 6, 2])
    keep = torch.tensor([[True, False, True]] * 4)
    pcm = pccompile.convert(model, (x, ids, keep))
    assert dict(pcm.graph.nodes(data="kind"))["ids"] == "input"
    # the mask and its negation are constants of the pass: never value nodes
    assert {v.name for v in pcm.plan.vertices}.isdisjoint({"ids", "keep", "invert"})
    assert torch.equal(pcm(x, ids, keep), model(x, ids, keep))
    cmp = assert_matches_bp(pcm, (x, ids, keep), torch.randn(4, 3, dtype=D), F.mse_loss)
    assert cmp.pc["lin.weight"].abs().sum() > 0


@pytest.mark.parametrize("rule", ["zil", "fpa", "il", "ipc"])
def test_model_without_parameters_learns_and_writes_nothing(rule):
    model = nn.Sequential(nn.Tanh(), nn.Softplus())
    pcm = pccompile.convert(model, torch.randn(2, 3))
    report = pcm.learn(torch.randn(2, 3), target=torch.randn(2, 3), loss_fn=F.mse_loss, rule=rule)
    assert report.loss > 0 and list(pcm.parameters()) == []


@pytest.mark.parametrize("rule, opts", [("zil", {}), ("zil", {"mode": "faithful"}), ("fpa", {})])
def test_frozen_parameters_get_no_grad_like_bp(rule, opts):
    model = net()
    model.conv.weight.requires_grad_(False)
    model.bn.requires_grad_(False)
    pcm = pccompile.convert(model, batch()[0])
    x, y = batch(2)
    cmp = assert_matches_bp(pcm, (x,), y, F.cross_entropy, rule, **opts)  # same grad sets
    assert set(cmp.pc) == {"conv.bias", "fc.weight", "fc.bias"}
    frozen = [model.conv.weight, model.bn.weight, model.bn.bias]
    assert all(p.grad is None for p in frozen)
    for p in frozen:  # a frozen parameter's old grad is left alone too (as backward() does)
        p.grad = torch.ones_like(p)
    pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule, **opts)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in frozen)


def test_parameters_shared_by_two_pcmodules_accumulate_like_bp():
    torch.manual_seed(0)
    shared = nn.Linear(4, 5).double()
    a = nn.Sequential(shared, nn.Tanh(), nn.Linear(5, 3)).double()
    b = nn.Sequential(shared, nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=D)
    ya, yb = torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    pa, pb = pccompile.convert(a, x), pccompile.convert(b, x)
    for rule in ("bp", "zil"):
        for p in [*a.parameters(), *b.parameters()]:
            p.grad = None
        pa.learn(x, target=ya, loss_fn=F.mse_loss, rule=rule)
        pb.learn(x, target=yb, loss_fn=F.mse_loss, rule=rule)
        if rule == "bp":
            ref = {id(p): p.grad.clone() for p in [*a.parameters(), *b.parameters()]}
    for p in [*a.parameters(), *b.parameters()]:
        torch.testing.assert_close(p.grad, ref[id(p)], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "loss_fn, got",
    [
        (lambda out, t: (out - t) ** 2, r"got Tensor\(6, 3\)"),
        (lambda out, t: 1.0, "got float"),
        (lambda out, t: torch.tensor(1), r"got Tensor\(\)"),
    ],
    ids=["unreduced", "python-float", "integer-tensor"],
)
@pytest.mark.parametrize("rule", ["zil", "fpa", "il"])
def test_loss_fn_that_is_not_a_scalar_float_tensor_is_refused(rule, loss_fn, got):
    pcm = pccompile.convert(_mlp(), _xy()[0])
    x, y = _xy()
    with pytest.raises(InputError, match=f"must return a scalar float tensor, {got}"):
        pcm.learn(x, target=y, loss_fn=loss_fn, rule=rule)
    assert all(p.grad is None for p in pcm.parameters())


# ------------------------------------------------------------------------------ safe loading
LIBRARY = Path(pccompile.__file__).parent


@functools.cache
def _library_calls() -> tuple[tuple[Path, ast.Call], ...]:
    """Every call expression in the library's source, parsed once."""
    return tuple(
        (path, node)
        for path in sorted(LIBRARY.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
    )


def _calls(attr: str, owner: str) -> list[tuple[Path, ast.Call]]:
    """Calls spelled ``owner.attr(...)`` in the library."""
    return [
        (path, node)
        for path, node in _library_calls()
        if isinstance(node.func, ast.Attribute)
        and node.func.attr == attr
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == owner
    ]


def test_every_torch_load_in_the_library_passes_weights_only_true():
    loads = _calls("load", "torch")
    assert loads, "expected at least the weights loader in modelspec.py"
    for path, call in loads:
        kw = {k.arg: k.value for k in call.keywords}
        where = f"{path.relative_to(LIBRARY.parent)}:{call.lineno}"
        assert isinstance(kw.get("weights_only"), ast.Constant), where
        assert kw["weights_only"].value is True, where


def test_the_library_never_unpickles_directly():
    for fn in ("load", "loads", "Unpickler"):
        assert not _calls(fn, "pickle"), f"pickle.{fn} in the library"
    for path, call in _calls("load", "np") + _calls("load", "numpy"):
        kw = {k.arg: k.value for k in call.keywords}
        ok = "allow_pickle" not in kw or getattr(kw["allow_pickle"], "value", None) is False
        assert ok, f"{path}:{call.lineno} np.load(allow_pickle=...)"


class _Evil:
    """Unpickling this would create a file: weights_only=True must refuse before that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_converted_refuses_a_weights_file_that_pickles_code(tmp_path, capsys):
    out = tmp_path / "mlp"
    spec = f"{FIXTURES / 'other_factories.py'}:make_mlp"
    assert cli_main(["convert", spec, "--input-shape", "3,4", "-o", str(out)]) == 0
    capsys.readouterr()
    assert isinstance(load_converted(out), pccompile.PCModule)
    state = torch.load(out / "weights.pt", weights_only=True)
    marker = tmp_path / "pwned"
    state["0.bias"] = _Evil(str(marker))
    torch.save(state, out / "weights.pt")
    with pytest.raises(ModelSpecError) as err:
        load_converted(out)
    msg = str(err.value)
    assert "refused by torch.load(weights_only=True)" in msg and "pickles io.open" in msg
    assert "torch.save(model.state_dict(), path)" in msg
    assert not marker.exists()


# ------------------------------------------------------------------------------ saved models
MLP_SPEC = f"{FIXTURES / 'other_factories.py'}:make_mlp"
LSTM_SPEC = f"{FIXTURES / 'lstm_factory.py'}:make_model"
SAVED = ["forward.py", "graph.graphml", "manifest.json", "weights.pt"]


def _converted_mlp(rule: object = "zil") -> pccompile.PCModule:
    """The fixture MLP in float64, converted, with weights moved away from the factory's init."""
    torch.manual_seed(3)
    pcm = pccompile.convert(build_model(parse_spec(MLP_SPEC)).model.double(), _mlp_x(), rule)
    with torch.no_grad():
        for p in pcm.parameters():
            p.add_(torch.randn_like(p))
    return pcm


def _mlp_x() -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=D)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "rule", [pccompile.ZIL(mode="faithful"), pccompile.FPA(gamma=0.5, steps=2)]
)
def test_save_converted_then_load_converted_gives_the_same_forward_and_rule(tmp_path, rule):
    pcm = _converted_mlp(rule)
    out = tmp_path / "mlp"
    man = save_converted(pcm, out, extra={"model": MLP_SPEC, "seed": 5, "note": "mine"})
    assert _entries(out) == SAVED and _entries(tmp_path) == ["mlp"]
    assert json.loads((out / "manifest.json").read_text()) == man
    assert man["format"] == FORMAT == "pccompile-converted/1" and man["note"] == "mine"
    assert man["dtype"] == "float64" and man["input_shapes"] == [[3, 4]]
    torch.manual_seed(99)  # the reload's factory init differs: the weights must come from the file
    back = load_converted(out)
    assert back.rule == pcm.rule == rule and back.training == pcm.training
    assert graph_summary(back) == graph_summary(pcm)
    x = torch.randn(3, 4, dtype=D)
    with torch.no_grad():
        assert torch.equal(back(x), pcm(x))


def test_a_leaf_module_class_is_saved_as_its_submodule_names(tmp_path):
    model = build_model(parse_spec(LSTM_SPEC)).model.train()
    pcm = pccompile.convert(model, torch.randn(2, 5, 8), "fpa", leaf_modules=[nn.LSTM])
    man = save_converted(pcm, tmp_path / "lstm", extra={"model": LSTM_SPEC})
    assert man["leaf_modules"] == ["lstm"] and man["training"] is True
    back = load_converted(tmp_path / "lstm")
    assert back.training and back.rule == pcm.rule
    assert graph_summary(back) == graph_summary(pcm)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), pcm.eval()(x))


def test_a_manifest_from_before_input_dtypes_still_loads(tmp_path):
    pcm = _converted_mlp()
    save_converted(pcm, tmp_path / "old", extra={"model": MLP_SPEC})
    man = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del man["input_dtypes"]  # what pccompile convert wrote before save_converted existed
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(man))
    x = _mlp_x()
    with torch.no_grad():
        assert torch.equal(load_converted(tmp_path / "old")(x), pcm(x))


@pytest.mark.parametrize(
    ("fmt", "needles"),
    [
        ("pccompile-converted/2", ["format 'pccompile-converted/2', newer", "upgrade pccompile"]),
        ("pccompile-converted/one", ["format 'pccompile-converted/one', not", "convert the"]),
        ("pccompile-converted/0", ["format 'pccompile-converted/0', not", "convert the"]),
        ("onnx/1", ["format 'onnx/1', not 'pccompile-converted/1'", "not written by pccompile"]),
        (None, ["has no 'format' entry", "convert the model again"]),
    ],
)
def test_load_converted_refuses_an_unknown_or_newer_format_before_running_anything(
    tmp_path, fmt, needles
):
    out = tmp_path / "mlp"
    save_converted(_converted_mlp(), out, extra={"model": MLP_SPEC})
    man = json.loads((out / "manifest.json").read_text())
    man.pop("format")
    if fmt is not None:
        man["format"] = fmt
    man["model"] = f"{FIXTURES / 'other_factories.py'}:make_broken"  # must never be called
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError) as err:
        load_converted(out)
    msg = str(err.value)
    assert str(out / "manifest.json") in msg and "factory exploded" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert isinstance(err.value, ModelSpecError)  # what load_converted has always raised


def test_load_converted_without_a_manifest_names_the_cause_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights_only").mkdir()
    torch.save({}, tmp_path / "weights_only" / "weights.pt")
    for name in ("missing", "empty", "weights_only"):
        with pytest.raises(ArtifactError) as err:
            load_converted(tmp_path / name)
        msg = str(err.value)
        assert f"{str(tmp_path / name)!r} has no manifest.json" in msg, msg
        assert "written by pccompile convert or pccompile.save_converted" in msg
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="is not a pccompile manifest .JSONDecodeError"):
        load_converted(tmp_path / "junk")


@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_a_failed_save_leaves_no_half_written_directory(tmp_path, monkeypatch, exc):
    pcm, extra = _converted_mlp(), {"model": MLP_SPEC}
    save_converted(pcm, tmp_path / "kept", extra=extra)
    before = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}

    def half_write(graph, path):
        Path(path).write_text("<graphml half-written")
        raise exc("simulated failure while writing")

    monkeypatch.setattr(artifact, "write_graphml", half_write)
    with pytest.raises(exc):
        save_converted(pcm, tmp_path / "new", extra=extra)
    with pytest.raises(exc):
        save_converted(pcm, tmp_path / "kept", overwrite=True, extra=extra)
    assert _entries(tmp_path) == ["kept"]  # no "new", no temporary folder
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()} == before


def test_save_converted_refuses_what_load_converted_could_not_rebuild(tmp_path):
    pcm = _converted_mlp()
    with pytest.raises(ArtifactError, match=r"needs the MODEL spec .*extra=\{'model'"):
        save_converted(pcm, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"writes \['format'\] itself"):
        save_converted(pcm, tmp_path / "b", extra={"model": MLP_SPEC, "format": "mine/9"})
    with pytest.raises(ConfigError, match="JSON values"):
        save_converted(pcm, tmp_path / "c", extra={"model": MLP_SPEC, "when": object()})
    custom = pccompile.convert(
        build_model(parse_spec(MLP_SPEC)).model,
        torch.randn(3, 4),
        pccompile.IL(energies={"0": pccompile.energies.squared_error}),
    )
    with pytest.raises(ArtifactError, match=r"\['energies'\]"):
        save_converted(custom, tmp_path / "d", extra={"model": MLP_SPEC})
    assert _entries(tmp_path) == []


def test_an_il_model_saves_and_loads_with_its_layer_vertices(tmp_path):
    model = build_model(parse_spec(MLP_SPEC)).model
    pcm = pccompile.convert(model, torch.randn(3, 4), pccompile.IL(steps=7, precision={"x": 2.0}))
    save_converted(pcm, tmp_path / "il", extra={"model": MLP_SPEC})
    back = pccompile.load_converted(tmp_path / "il")
    assert back.capture_options.granularity == "layer" and back.capture_options.level is False
    assert back.rule == pcm.rule
    assert [v.name for v in back.plan.vertices] == [v.name for v in pcm.plan.vertices]
