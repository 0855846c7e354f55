"""A deep residual MLP on real data: IL, muPC + IL and ePC against BP (issue 22).

The network of FabricPC's and jpc's muPC depth experiments, on scikit-learn's digits (the
offline stand-in for MNIST; Fashion-MNIST belongs to the reproduction issue):
``x (64) -> W_in -> [h + W_l relu(h)] x blocks -> W_out (10)``, width 32 by default.

Rules (``--runs``): ``bp`` (autograd, the reference), ``il`` (standard parametrisation, PyTorch's
init, ``T`` = the default ``max(depth + 1, 20)``), ``mupc-zil`` (Z-IL on the muPC network:
BP's gradients of the scaled network, the reference for the muPC rows), ``mupc-il`` (``convert(...,
parametrization="mupc")``, same ``T``), ``epc`` (``T`` = 5 error steps of 0.1) and ``mupc-epc``.
Weights: Adam on ``p.grad``, lr ``--lr`` (1e-3) for the standard network and ``--mupc-lr`` (0.1)
for the muPC one (its weights are N(0, 1): at 1e-3 neither BP nor PC moved them in a 1-epoch
trial, 0.43 / 0.30 test accuracy at 8 blocks, against 0.79 / 0.72 at 0.1); batch 128;
cross-entropy, output clamped; seed 0.
Prints one Markdown row per run (final/best test accuracy, seconds, whether the first layer got a
non-zero gradient at every batch, in how many batches ``learn`` saw the energy rise). Cost at
the defaults (64 blocks, 3 epochs, one thread, the shared 2-core machine under load): BP and
ePC seconds to a minute, each IL row about 12 minutes (T = 195 inference steps per batch);
``--blocks 8 --epochs 1`` is a one-minute smoke run. FabricPC's table (MNIST, width 64,
3 epochs, T = 6 (blocks + 2)) is in docs/pc.md.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.data import digits


class ResMLP(nn.Module):
    def __init__(self, blocks: int, width: int):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for blk in self.blocks:
            h = h + blk(torch.relu(h))
        return self.out(h)


def train(
    run: str,
    *,
    blocks: int,
    width: int,
    epochs: int,
    lr: float,
    mupc_lr: float,
    data,
    epc_gamma: float = 0.1,
    seed: int = 0,
):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = ResMLP(blocks, width)
    mupc = run.startswith("mupc-")
    rule = run.removeprefix("mupc-")
    pcm = pccompile.convert(
        model,
        x_tr[:128],
        rule=rule,
        loss_fn=F.cross_entropy,
        parametrization="mupc" if mupc else None,
    )
    cfg = {
        "bp": "bp",
        "zil": "zil",
        "il": pccompile.IL(),
        "epc": pccompile.EPC(steps=5, gamma=epc_gamma),
    }[rule]
    opt = torch.optim.Adam(model.parameters(), lr=mupc_lr if mupc else lr)
    g = torch.Generator().manual_seed(seed)
    accs, reached, rose, batches, t0 = [], True, 0, 0, time.perf_counter()
    steps = None
    for _ in range(epochs):
        perm = torch.randperm(len(y_tr), generator=g)
        for k in range(0, len(perm), 128):
            idx = perm[k : k + 128]
            opt.zero_grad()
            with warnings.catch_warnings():  # the report records what learn warns about
                warnings.simplefilter("ignore")
                report = pcm.learn(x_tr[idx], target=y_tr[idx], rule=cfg)
            steps = report.steps
            reached &= bool(model.inp.weight.grad.abs().max() > 0)
            rose += report.diverged_at is not None
            batches += 1
            opt.step()
        with torch.no_grad():
            accs.append(float((pcm(x_te).argmax(1) == y_te).float().mean()))
    return {
        "run": run,
        "blocks": blocks,
        "T": steps,
        "final": accs[-1],
        "best": max(accs),
        "seconds": time.perf_counter() - t0,
        "first_layer_reached": reached,
        "rose": f"{rose}/{batches}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--runs", nargs="+", default=["bp", "il", "epc", "mupc-zil", "mupc-il", "mupc-epc"]
    )
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mupc-lr", type=float, default=0.1)
    ap.add_argument("--epc-gamma", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits(test_fraction=0.25, stratify=True, seed=0)
    print(
        "| run | blocks | T | final acc | best acc | seconds | first layer reached "
        "| batches with a rising energy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        r = train(
            run,
            blocks=args.blocks,
            width=args.width,
            epochs=args.epochs,
            lr=args.lr,
            mupc_lr=args.mupc_lr,
            data=data,
            epc_gamma=args.epc_gamma,
        )
        print(
            f"| {r['run']} | {r['blocks']} | {r['T']} | {r['final']:.3f} | {r['best']:.3f} | "
            f"{r['seconds']:.0f} | {r['first_layer_reached']} | {r['rose']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
