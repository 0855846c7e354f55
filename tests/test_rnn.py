"""Recurrent networks: unrolled with one vertex per time step, Z-IL and FPA equal BPTT."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_matches_bp, compare_to_bp

import pccompile
from pccompile import InputError, TraceError
from pccompile.data import digits

T = 8
F32_RNN_TOL = 5e-6


class ManyToOne(nn.Module):
    def __init__(self, cls, n_in=5, hidden=6, n_out=3, **kw):
        super().__init__()
        self.rnn = cls(n_in, hidden, **kw)
        self.bf = kw.get("batch_first", False)
        self.fc = nn.Linear(hidden * (2 if kw.get("bidirectional") else 1), n_out)

    def forward(self, x, h0=None):
        out, _ = self.rnn(x, h0)
        return self.fc(out[:, -1] if self.bf else out[-1])


class LastHidden(nn.Module):
    """Reads h_n (the final state per layer) instead of the output sequence."""

    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = cls(5, 6, **kw)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if isinstance(self.rnn, nn.LSTM):  # a Python branch on the module, fixed at trace time
            _, (h, _) = self.rnn(x)
        else:
            _, h = self.rnn(x)
        return self.fc(torch.tanh(h[-1]))


class ManyToMany(nn.Module):
    """Loss on every step: a readout applied to the whole output sequence."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


class Elman(nn.Module):
    """A hand-written RNN loop over a fixed length."""

    def __init__(self):
        super().__init__()
        self.inp, self.rec, self.out = nn.Linear(5, 6), nn.Linear(6, 6, bias=False), nn.Linear(6, 3)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], 6)  # torch.zeros(proxy, ...) does not trace
        for t in range(T):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)


class CellLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.out = nn.LSTMCell(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 6)
        for t in range(T):
            h, c = self.cell(x[:, t], (h, c))
        return self.out(h)


CASES = {
    "rnn_2layer": lambda: ManyToOne(nn.RNN, num_layers=2),
    "rnn_relu_nobias": lambda: ManyToOne(nn.RNN, nonlinearity="relu", bias=False, batch_first=True),
    "gru_2layer": lambda: ManyToOne(nn.GRU, num_layers=2, batch_first=True),
    "lstm_2layer": lambda: ManyToOne(nn.LSTM, num_layers=2),
    "lstm_bidirectional": lambda: ManyToOne(
        nn.LSTM, num_layers=2, bidirectional=True, batch_first=True
    ),
    "gru_hn": lambda: LastHidden(nn.GRU, num_layers=2, batch_first=True),
    "lstm_hn": lambda: LastHidden(nn.LSTM, batch_first=True),
    "many_to_many": ManyToMany,
    "elman_loop": Elman,
    "lstmcell_loop": CellLoop,
}


def _batch(name, dtype):
    torch.manual_seed(1)
    batch_first = name not in ("rnn_2layer", "lstm_2layer")
    x = torch.randn(4, T, 5) if batch_first else torch.randn(T, 4, 5)
    y = torch.randint(0, 3, (4, T)) if name == "many_to_many" else torch.tensor([0, 1, 2, 1])
    return x.to(dtype), y


def _loss(name):
    if name == "many_to_many":
        return lambda out, y: F.cross_entropy(out.reshape(-1, 3), y.reshape(-1))
    return F.cross_entropy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule", ["zil", "fpa"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_unrolled_rnn_matches_bptt(name, rule, dtype):
    torch.manual_seed(0)
    model = CASES[name]().to(dtype)
    x, y = _batch(name, dtype)
    pcm = pccompile.convert(model, x, rule=rule)
    # Unrolled cells against torch's fused kernel: the same mathematics, other rounding. In
    # float32 the measured worst is 1.1e-6 relative (lstm_2layer); float64 stays within 1e-12.
    tol = F32_RNN_TOL if dtype == torch.float32 else None
    assert_matches_bp(pcm, (x,), y, _loss(name), rule, tol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_faithful_schedule_equals_bptt(name):
    torch.manual_seed(0)
    model = CASES[name]().double()
    x, y = _batch(name, torch.float64)
    pcm = pccompile.convert(model, x)
    assert_matches_bp(pcm, (x,), y, _loss(name), "zil", mode="faithful")


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"batch_first": True},
        {"num_layers": 3},
        {"bias": False},
        {"bidirectional": True, "num_layers": 2, "batch_first": True},
    ],
    ids=["default", "batch_first", "3layers", "nobias", "bidirectional"],
)
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_state", "given_state"])
def test_unrolled_forward_equals_module(cls, kw, with_h0):
    torch.manual_seed(0)
    model = ManyToOne(cls, **kw).double()
    x = torch.randn(4, T, 5) if kw.get("batch_first") else torch.randn(T, 4, 5)
    x = x.double()
    n_states = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h0 = torch.randn(n_states, 4, 6, dtype=torch.float64) if with_h0 else None
    if with_h0 and cls is nn.LSTM:
        h0 = (h0, torch.randn_like(h0))
    inputs = (x, h0) if with_h0 else (x,)
    pcm = pccompile.convert(model, inputs)
    assert not any(n.op == "call_module" and n.target == "rnn" for n in pcm.plan.nodes)
    torch.testing.assert_close(pcm(*inputs), model(*inputs), rtol=0, atol=1e-12)
    if with_h0:
        y = torch.tensor([0, 1, 2, 1])
        assert_matches_bp(pcm, inputs, y, F.cross_entropy, "zil")


def test_graph_has_one_vertex_per_time_step_at_consecutive_levels():
    torch.manual_seed(0)
    model = ManyToOne(nn.LSTM, batch_first=True).double()
    x, _ = _batch("lstm_bidirectional", torch.float64)
    g = pccompile.convert(model, x).graph
    cells = [d for _, d in g.nodes(data=True) if d["op"] == "function:lstm_cell"]
    assert len(cells) == T
    # readout at level 1, then h_K at 2 ... h_1 at K+1: one level per step back in time.
    assert sorted(d["level"] for d in cells) == list(range(2, T + 2))
    weights = {p for d in cells for p in d["params"]}
    assert weights == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"}


def test_shared_weights_are_never_applied_during_inference():
    """Each step's contribution goes to p.grad after inference; the weights do not move."""
    torch.manual_seed(0)
    model = ManyToOne(nn.LSTM, batch_first=True).double()
    x, y = _batch("lstm_bidirectional", torch.float64)
    before = copy.deepcopy(model.state_dict())
    pcm = pccompile.convert(model, x)
    pcm.learn(x, target=y, loss_fn=F.cross_entropy, mode="faithful")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_many_to_many_needs_levelling():
    torch.manual_seed(0)
    model = ManyToMany().double()
    x, y = _batch("many_to_many", torch.float64)
    leveled = pccompile.convert(model, x)
    assert sum(1 for _, d in leveled.graph.nodes(data=True) if d["kind"] == "identity") > 0
    assert_matches_bp(leveled, (x,), y, _loss("many_to_many"), "zil")
    unleveled = pccompile.convert(model, x, level=False)
    bad = compare_to_bp(unleveled, (x,), y, _loss("many_to_many"), "zil")
    assert max(bad.errors.values()) > 0.1


def test_sequence_length_is_fixed_at_conversion():
    model = ManyToOne(nn.GRU, batch_first=True)
    pcm = pccompile.convert(model, torch.randn(2, T, 5))
    with pytest.raises(InputError, match=r"unrolled for sequences of length 8 .* got length 5"):
        pcm.learn(torch.randn(2, 5, 5), target=torch.tensor([0, 1]), loss_fn=F.cross_entropy)
    with pytest.raises(InputError, match="convert one PCModule per length"):
        pcm(torch.randn(2, 9, 5))


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(5, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])


def test_packed_sequences_are_refused_with_the_remedy():
    with pytest.raises(
        TraceError, match="sequence length is fixed at conversion.*per sequence length"
    ):
        pccompile.convert(Packed(), (torch.randn(3, 7, 5), torch.tensor([7, 4, 2])))


def test_lstm_on_digits_rows_follows_bp_for_100_adam_steps():
    xs, ys, xte, yte = digits(torch.float64)
    xs, xte = xs.squeeze(1), xte.squeeze(1)  # 8 time steps x 8 features
    torch.manual_seed(0)
    base = ManyToOne(nn.LSTM, n_in=8, hidden=16, n_out=10, batch_first=True).double()
    final = {}
    for rule in ("bp", "zil"):
        model = copy.deepcopy(base)
        pcm = pccompile.convert(model, xs[:2])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for s in range(100):
            i = torch.arange(s * 32, (s + 1) * 32) % len(ys)
            opt.zero_grad()
            pcm.learn(xs[i], target=ys[i], loss_fn=F.cross_entropy, rule=rule)
            opt.step()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).double().mean().item()
        final[rule] = (model, acc)
    for (name, a), b in zip(
        final["bp"][0].state_dict().items(), final["zil"][0].state_dict().values()
    ):
        assert ((a - b).norm() / a.norm()).item() <= 1e-8, name
    assert final["bp"][1] == final["zil"][1] > 0.6
