"""Training trajectories: Z-IL with SGD+momentum and with Adam stays on BP's trajectory."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.data import digits


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class DigitsResNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _train(pcm, rule, opt_factory, xs, ys, steps):
    opt = opt_factory(pcm.parameters())
    for s in range(steps):
        i = torch.arange(s * 32, (s + 1) * 32) % len(ys)
        opt.zero_grad()
        pcm.learn(xs[i], target=ys[i], loss_fn=F.cross_entropy, rule=rule)
        opt.step()


@pytest.mark.parametrize(
    "opt_factory",
    [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-2)],
    ids=["sgd_momentum", "adam"],
)
def test_zil_follows_bp_for_50_steps(opt_factory):
    xs, ys, _, _ = digits(torch.float64)
    torch.manual_seed(0)
    base = DigitsResNet().double()
    runs = {}
    for rule in ("bp", "zil"):
        model = copy.deepcopy(base)
        pcm = pccompile.convert(model, xs[:2])
        _train(pcm, rule, opt_factory, xs, ys, 50)
        runs[rule] = model
    moved = 0.0
    for (name, p_bp), p_zil, p0 in zip(
        runs["bp"].state_dict().items(),
        runs["zil"].state_dict().values(),
        base.state_dict().values(),
    ):
        if not p_bp.is_floating_point():
            assert torch.equal(p_bp, p_zil), name
            continue
        rel = (p_zil - p_bp).norm() / p_bp.norm().clamp_min(1e-30)
        assert rel <= 1e-8, f"{name}: {rel:.2e}"
        moved = max(moved, ((p_bp - p0).norm() / p0.norm().clamp_min(1e-30)).item())
    assert moved > 0.05  # the parameters really trained
