"""Approximate PC at the field's accuracy: IL and iPC against BP on scikit-learn's digits.

The setup of the PC libraries' side-by-side comparison: ``load_digits`` split 75/25 stratified,
images standardised; an MLP 64-128-128-10 (ReLU) and a two-convolution CNN; batch 64, shuffled
by a seeded generator; weights by ``SGD(0.05, momentum=0.9)``; inference ``gamma = 0.1`` for
``T`` steps; cross-entropy loss (the output clamped to the target, its energy the loss). iPC
steps the weights at every inference evaluation with ``SGD(--ipc-lr, momentum=0.9)``. Every
rule starts from the same initial weights (one seed per run) and sees the same batches.

Usage::

    python benchmarks/pc_accuracy.py                       # the whole table
    python benchmarks/pc_accuracy.py --models mlp --runs il:20 il:5 --epochs 20

Prints, per model and run, the final and the best test accuracy over the epochs (and writes
``--json`` when asked).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.data import digits


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


MODELS = {"mlp": mlp, "cnn": cnn}


def train(
    model_name: str,
    rule: str,
    steps: int,
    *,
    epochs: int,
    seed: int,
    ipc_lr: float,
    batch: int = 64,
    data=None,
    granularity: str | None = None,
    output: str = "clamp",
) -> dict:
    """Train one model with one rule; returns per-epoch test accuracies."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    pcm = pccompile.convert(model, x_tr[:batch], rule=rule, granularity=granularity)
    lr = ipc_lr if rule == "ipc" else 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if rule == "ipc":
        cfg = pccompile.IPC(gamma=0.1, steps=steps, optimizer=opt, output=output)
    elif rule == "il":
        cfg = pccompile.IL(gamma=0.1, steps=steps, output=output)
    else:
        cfg = rule
    g = torch.Generator().manual_seed(seed)
    accs, t0 = [], time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_tr), generator=g)
        for k in range(0, len(perm), batch):
            idx = perm[k : k + batch]
            opt.zero_grad()
            pcm.learn(x_tr[idx], target=y_tr[idx], loss_fn=F.cross_entropy, rule=cfg)
            if rule != "ipc":
                opt.step()
        model.eval()
        with torch.no_grad():
            accs.append(float((model(x_te).argmax(1) == y_te).float().mean()))
    return {
        "model": model_name,
        "rule": rule,
        "steps": steps,
        "seed": seed,
        "final": accs[-1],
        "best": max(accs),
        "accs": accs,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=sorted(MODELS))
    ap.add_argument(
        "--runs", nargs="+", default=["bp:0", "il:20", "il:5", "ipc:20"], help="rule:T pairs"
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ipc-lr", type=float, default=0.01)
    ap.add_argument("--granularity", choices=["op", "layer"], default=None)
    ap.add_argument("--output", choices=["clamp", "free"], default="clamp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits(test_fraction=0.25, stratify=True, seed=0)
    rows = []
    print("| model | rule | T | seed | final acc | best acc | seconds |")
    print("|---|---|---|---|---|---|---|")
    for m in args.models:
        for run in args.runs:
            rule, steps = run.split(":")
            for seed in args.seeds:
                r = train(
                    m,
                    rule,
                    int(steps),
                    epochs=args.epochs,
                    seed=seed,
                    ipc_lr=args.ipc_lr,
                    data=data,
                    granularity=args.granularity,
                    output=args.output,
                )
                rows.append(r)
                print(
                    f"| {m} | {rule} | {steps} | {seed} | {r['final']:.3f} | {r['best']:.3f} "
                    f"| {r['seconds']:.1f} |",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
