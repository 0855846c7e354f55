"""Hand-written models covering the shapes of graph PC must get right (DESIGN.md section 4)."""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class PostActMLP(nn.Module):
    """mu = f(W x): nonlinearity after the weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)
        )

    def forward(self, x):
        return self.net(x)


class PreActMLP(nn.Module):
    """mu = W f(x): nonlinearity on the presynaptic value (Whittington & Bogacz's form)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 7), nn.Linear(7, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


class SmallCNN(nn.Module):
    """conv-tanh-pool-conv-tanh-FC."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.c1(x)), 2)
        x = torch.tanh(self.c2(x))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """x + block(x): a skip edge that jumps levels (needs identity vertices)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True), nn.Linear(6, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        y = self.block(h)
        y += h  # in-place add: functionalised by capture
        return self.out(F.relu(y, inplace=True))


class ConcatBranches(nn.Module):
    """Two branches of different depth concatenated (inception-style)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 3)
        self.b = nn.Sequential(nn.Linear(8, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Tanh())
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.cat([torch.tanh(self.a(x)), self.b(x)], dim=1))


class Reused(nn.Module):
    """One Linear called twice: two parameter uses at two levels."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.out(h)


class Tied(nn.Module):
    """Autoencoder whose decoder uses the encoder's weight transposed (a parameter transform)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 5)
        self.dec_bias = nn.Parameter(torch.zeros(8))

    def forward(self, x):
        h = torch.sigmoid(self.enc(x))
        return F.linear(h, self.enc.weight.t(), self.dec_bias)


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.l = nn.Linear(4 * 4 * 4, 3)
        self.bn1d = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn1d(self.l(F.relu(self.bn(self.c(x))).flatten(1)))


class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.drop(torch.relu(self.l1(x)))
        h = F.dropout(torch.tanh(self.l2(h)), 0.2, training=self.training)
        return self.l3(h)


Heads = namedtuple("Heads", "main aux")


class MultiOutput(nn.Module):
    """Two heads at different depths returned as a namedtuple."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 6)
        self.aux = nn.Linear(6, 2)
        self.main = nn.Sequential(nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x):
        h = self.trunk(x)
        return Heads(self.main(h), self.aux(h))


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 6)
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return {"logits": self.a(h), "score": self.b(torch.sigmoid(h))}


class Functional(nn.Module):
    """Raw parameters used through get_attr, a learned token expanded by the batch size, chunk()
    (a vertex with a tuple output) and Tensor methods."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.b = nn.Parameter(torch.zeros(6))
        self.token = nn.Parameter(torch.randn(1, 6) * 0.1)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = (x @ self.w + self.b).tanh()
        h = h + self.token.expand(x.size(0), -1)
        a, b = h.chunk(2, dim=1)
        return self.out(a * torch.sigmoid(b))


class Embedder(nn.Module):
    """Integer input: clamped, never a value node; the embedding output is the first vertex."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.emb(ids)).flatten(1))


def xent_sum(out, y):
    return sum(F.cross_entropy(o, y) for o in out)


def _mse_dict(out, y):
    return F.cross_entropy(out["logits"], y) + out["score"].pow(2).mean()


def _heads(out, y):
    return F.cross_entropy(out.main, y) + F.cross_entropy(out.aux, y % 2)


# name -> (factory, input factory, target factory, loss_fn)
ZOO = {
    "mlp_post": (PostActMLP, lambda: torch.randn(3, 8), lambda: torch.randn(3, 4), F.mse_loss),
    "mlp_pre": (PreActMLP, lambda: torch.randn(3, 8), lambda: torch.randn(3, 4), F.mse_loss),
    "cnn": (
        SmallCNN,
        lambda: torch.randn(2, 1, 8, 8),
        lambda: torch.tensor([1, 4]),
        F.cross_entropy,
    ),
    "residual": (
        Residual,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        F.cross_entropy,
    ),
    "concat": (
        ConcatBranches,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        F.cross_entropy,
    ),
    "reused": (
        Reused,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        F.cross_entropy,
    ),
    "tied": (Tied, lambda: torch.randn(4, 8), lambda: torch.randn(4, 8), F.mse_loss),
    "batchnorm": (
        WithBatchNorm,
        lambda: torch.randn(4, 2, 4, 4),
        lambda: torch.tensor([0, 1, 2, 0]),
        F.cross_entropy,
    ),
    "dropout": (
        WithDropout,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        F.cross_entropy,
    ),
    "multi_output": (
        MultiOutput,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        _heads,
    ),
    "dict_output": (
        DictOutput,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 2, 0]),
        _mse_dict,
    ),
    "functional": (
        Functional,
        lambda: torch.randn(4, 8),
        lambda: torch.tensor([0, 1, 0, 1]),
        F.cross_entropy,
    ),
    "embedding": (
        Embedder,
        lambda: torch.randint(0, 10, (3, 4)),
        lambda: torch.tensor([0, 1, 2]),
        F.cross_entropy,
    ),
}


def build(name: str, dtype=torch.float64, seed: int = 0):
    factory, make_x, make_y, loss_fn = ZOO[name]
    torch.manual_seed(seed)
    model = factory().to(dtype)
    x = make_x()
    if x.is_floating_point():
        x = x.to(dtype)
    y = make_y()
    if y.is_floating_point():
        y = y.to(dtype)
    return model, x, y, loss_fn
