"""The main job behind ``make demo``.

1. Convert torchvision's resnet18 (weights=None) and show, per parameter, that one Z-IL learn
   step gives autograd's gradients.
2. Train a small residual CNN on scikit-learn's embedded digits with Z-IL and with BP side by
   side: same accuracy, same parameters.

Needs the ``data`` extra (scikit-learn) besides the core dependencies:
``pip install 'pccompile[data]'``; ``make demo`` installs it (``.[dev]``).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.data import digits
from pccompile.verify import verify


class DigitsNet(nn.Module):
    """conv stem, one residual block with BatchNorm, global pool, linear head."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        h = self.stem(x)
        h = F.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def main() -> int:
    import torchvision

    xtr, ytr, xte, yte = digits()  # first, so a missing scikit-learn stops the demo at once
    torch.manual_seed(0)
    print("== 1. Z-IL vs autograd on torchvision resnet18 (weights=None), one learn step ==")
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    t0 = time.perf_counter()
    pcm = pccompile.convert(net, x)
    g = pcm.graph
    n_id = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "identity")
    print(
        f"converted in {time.perf_counter() - t0:.2f}s: {g.number_of_nodes()} vertices "
        f"({n_id} identity vertices from levelling), depth {pcm.plan.depth}"
    )
    res = verify(pcm, (x,), y, F.cross_entropy, "zil")
    lines = res.table().splitlines()
    print("\n".join(lines[:8] + ["  ..."] + lines[-3:]))
    worst = res.worst
    print(
        f"{len(res.rows)} parameter tensors, worst relative difference {worst.rel:.1e} "
        f"({worst.name}): {'PASS' if res.passed else 'FAIL'}\n"
    )

    print("== 2. Training on the embedded digits data: Z-IL and BP side by side ==")
    torch.manual_seed(0)
    base = DigitsNet()
    runs = {rule: copy.deepcopy(base) for rule in ("bp", "zil")}
    pcms = {rule: pccompile.convert(m, xtr[:2]) for rule, m in runs.items()}
    opts = {rule: torch.optim.Adam(m.parameters(), lr=4e-3) for rule, m in runs.items()}
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, 11):
        perm = torch.randperm(len(ytr), generator=gen)
        times = {"bp": 0.0, "zil": 0.0}
        for i in range(0, len(perm) - 63, 64):
            idx = perm[i : i + 64]
            for rule in ("bp", "zil"):
                t0 = time.perf_counter()
                opts[rule].zero_grad()
                pcms[rule].learn(xtr[idx], target=ytr[idx], loss_fn=F.cross_entropy, rule=rule)
                opts[rule].step()
                times[rule] += time.perf_counter() - t0
        accs = {rule: _accuracy(m, xte, yte) for rule, m in runs.items()}
        drift = max(
            (
                (a - b).abs().max().item()
                for a, b in zip(runs["zil"].parameters(), runs["bp"].parameters())
            ),
        )
        print(
            f"epoch {epoch}: test accuracy bp {accs['bp']:.3f}  zil {accs['zil']:.3f}  "
            f"max |theta_zil - theta_bp| {drift:.1e}  "
            f"time bp {times['bp']:.2f}s  zil {times['zil']:.2f}s"
        )
    return 0 if res.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
