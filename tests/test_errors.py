"""Bad input gets a clear error naming the cause and the fix, before any inference runs."""

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_bp

import pccompile
from pccompile import InputError, TraceError, UnsupportedOpError, ops


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return x * 2
        return -x


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(4, 4), Gate(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.gate(self.a(x))))


def test_untraceable_model_names_line_submodule_and_remedies():
    x = torch.randn(3, 4)
    with pytest.raises(TraceError) as err:
        pccompile.convert(Branchy(), x)
    msg = str(err.value)
    assert "test_errors.py" in msg and "if x.sum() > 0" in msg
    assert "leaf_modules=['gate']" in msg and "concrete_args" in msg


def test_marking_the_submodule_a_leaf_makes_it_an_exact_opaque_vertex():
    torch.manual_seed(0)
    model = Branchy().double()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    pcm = pccompile.convert(model, x, leaf_modules=["gate"])
    assert pcm.plan.vertices[pcm.plan.vid_of_node[_node(pcm, "gate")]].rule.kind == "opaque"
    assert_matches_bp(pcm, (x,), y, F.mse_loss, "zil")
    assert_matches_bp(pcm, (x,), y, F.mse_loss, "zil", mode="faithful")


def _node(pcm, target):
    return next(n for n in pcm.plan.nodes if n.op == "call_module" and n.target == target)


def mystery(x):
    return x * torch.sigmoid(x)


torch.fx.wrap("mystery")


class UsesMystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x):
        return mystery(self.l(x))


def test_op_without_rule_names_node_op_and_fix():
    with pytest.raises(UnsupportedOpError) as err:
        pccompile.convert(UsesMystery(), torch.randn(2, 4), capture="fx")
    msg = str(err.value)
    assert "'mystery'" in msg and "mystery" in msg.split(":")[0] + msg
    # called from the root module: no submodule to make a leaf, so no leaf_modules advice
    assert "capture='export'" in msg and "register_function" in msg
    assert "leaf_modules" not in msg
    ops.register_function(mystery)
    try:
        with pytest.raises(ValueError, match="already has a rule"):
            ops.register_function(mystery)
        model = UsesMystery().double()
        x, y = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        assert_matches_bp(pccompile.convert(model, x, capture="fx"), (x,), y, F.mse_loss)
    finally:
        del ops.registry._FUNCTIONS[mystery]


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return pccompile.convert(net, torch.randn(2, 4))


@pytest.mark.parametrize(
    "target, loss_fn, match",
    [
        (torch.randn(5, 3), F.mse_loss, "batch size 5 does not match the output's 6"),
        (torch.randn(6), F.mse_loss, r"shaped like the output \(6, 3\), got \(6,\)"),
        (torch.randn(6, 1), F.mse_loss, r"shaped like the output \(6, 3\)"),
        (torch.randint(0, 3, (6, 3)), F.mse_loss, "floating-point target"),
        (torch.randn(6, 3).double(), F.mse_loss, None),
        (torch.tensor([0.0, 1, 2, 0, 1, 2]), F.cross_entropy, "class probabilities"),
        (torch.randint(0, 3, (6, 1)), F.cross_entropy, r"class indices shaped \(6,\)"),
        (torch.tensor([0, 1, 5, 0, 1, 2]), F.cross_entropy, "IndexError|out of bounds"),
        (torch.tensor([0.0, float("nan"), 0, 0, 1, 2]), nn.L1Loss(), "NaN"),
    ],
)
def test_bad_targets_fail_before_inference(mlp, target, loss_fn, match):
    x = torch.randn(6, 4)
    if match is None:  # float64 target with a float32 model: torch promotes; fine
        mlp.learn(x, target=target, loss_fn=loss_fn)
        return
    with pytest.raises(InputError, match=match):
        mlp.learn(x, target=target, loss_fn=loss_fn)
    assert all(p.grad is None for p in mlp.parameters())


def test_bad_inputs(mlp):
    y = torch.randn(2, 3)
    with pytest.raises(InputError, match="takes 1 input"):
        mlp.learn(torch.randn(2, 4), torch.randn(2, 4), target=y, loss_fn=F.mse_loss)
    with pytest.raises(InputError, match="NaN or Inf"):
        mlp.learn(torch.full((2, 4), float("inf")), target=y, loss_fn=F.mse_loss)
    with pytest.raises(InputError, match="empty"):
        mlp.learn(torch.randn(0, 4), target=y[:0], loss_fn=F.mse_loss)
    with pytest.raises(InputError, match=r"is on meta .* \.to\('cpu'\)"):
        mlp.learn(torch.randn(2, 4, device="meta"), target=y, loss_fn=F.mse_loss)
    with pytest.raises(pccompile.ConfigError, match="loss_fn"):
        mlp.learn(torch.randn(2, 4), target=y)
    with pytest.raises(pccompile.ConfigError, match="Unknown rule 'zill'"):
        mlp.learn(torch.randn(2, 4), target=y, loss_fn=F.mse_loss, rule="zill")
    with pytest.raises(pccompile.ConfigError, match=r"do not apply to rule 'zil'.*\['gamma'"):
        mlp.learn(torch.randn(2, 4), target=y, loss_fn=F.mse_loss, lr=0.1)
    assert all(p.grad is None for p in mlp.parameters())


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x, scale: float, ids):
        return self.l(x) * scale + ids.float().unsqueeze(1)


def test_non_tensor_and_integer_inputs_are_clamped_not_value_nodes():
    torch.manual_seed(0)
    model = Scaled().double()
    x, ids = torch.randn(2, 4, dtype=torch.float64), torch.tensor([1, 2])
    pcm = pccompile.convert(model, (x, 3.0, ids))
    g = pcm.graph
    inputs = [v for v, d in g.nodes(data=True) if d["kind"] == "input"]
    assert sorted(inputs) == ["ids", "scale", "x"]
    assert all(v not in [w.name for w in pcm.plan.vertices] for v in inputs)
    y = torch.randn(2, 3, dtype=torch.float64)
    assert_matches_bp(pcm, (x, 3.0, ids), y, F.mse_loss)


def test_converting_twice_is_a_clear_error(mlp):
    with pytest.raises(pccompile.ConfigError, match="already a PCModule"):
        pccompile.convert(mlp, torch.randn(2, 4))
    assert isinstance(pccompile.unconvert(mlp), nn.Sequential)
