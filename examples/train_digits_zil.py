"""Train a small CNN on scikit-learn's digits with Z-IL, then watch one faithful inference.

.venv/bin/python examples/train_digits_zil.py [--epochs 5] [--out examples_out]
writes OUT/zil_dynamics.png (examples_out/ by default, not the folder it is run from).
"""

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.data import digits
from pccompile.plot import plot_trace


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("examples_out"))
    args = ap.parse_args(argv)
    xtr, ytr, xte, yte = digits()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )
    pcm = pccompile.convert(net, xtr[:2], rule="zil", loss_fn=F.cross_entropy)
    opt = torch.optim.Adam(pcm.parameters(), lr=3e-3)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(perm) - 63, 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            pcm.learn(xtr[idx], target=ytr[idx])  # Z-IL inference writes p.grad (== BP's)
            opt.step()
        with torch.no_grad():
            acc = (pcm(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {epoch + 1}: test accuracy {acc:.3f}")
    report = pcm.learn(xtr[:32], target=ytr[:32], trace=True)  # the faithful schedule
    levels = report.trace.level_error_norms()
    for t in range(report.steps):  # the error front moves down one level per step
        reached = [lvl for lvl, norms in levels.items() if norms[t] > 0]
        print(f"step {t}: errors non-zero at levels {reached}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = plot_trace(report.trace, args.out / "zil_dynamics.png", title="Z-IL error front")
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
