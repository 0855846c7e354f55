"""The main job behind ``make demo``.

1. Convert torchvision's resnet18 (weights=None) and show, per parameter, that one Z-IL learn
   step gives autograd's gradients.
2. The main job (``pccompile train``'s library, :func:`pccompile.train.fit`) on scikit-learn's
   embedded digits: a residual CNN trained by Z-IL with a BP copy alongside (same accuracy, the
   same parameters bit for bit; Adam with a cosine learning-rate decay, so BP's test accuracy
   rises steadily) and by IL (20 inference steps; SGD with momentum, the optimiser IL is run
   with in the PC literature and the one that trains it here, see docs/pc.md); a table per
   epoch with each rule's seconds, and ``demo_out/curves.png`` with the three runs.

Needs the ``data`` extra (scikit-learn) besides the core dependencies:
``pip install 'pccompile[data]'``; ``make demo`` installs it (``.[dev]``). Without it the demo
says so in one line and exits 2, as the command line does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pccompile
from pccompile.data import load_dataset
from pccompile.errors import ConfigError, PCCompileError
from pccompile.train import ResidualCNN, TrainConfig, fit
from pccompile.train.curves import plot_runs
from pccompile.verify import verify

OUT = Path("demo_out")


# (rule, its options, its optimiser): Z-IL and BP share theirs (bitwise equal runs); IL gets the
# one it trains with (Adam's per-parameter scaling turns IL's small far-layer gradients into
# full-size steps on this BatchNorm net: docs/pc.md, practical notes)
RUNS = (
    ("zil", {}, {"optimizer": "adam", "lr": 4e-3}),
    ("il", {"steps": 20, "gamma": 0.1}, {"optimizer": "sgd", "lr": 0.15, "momentum": 0.9}),
)


def main() -> int:
    try:
        data = load_dataset("digits")  # first, so a missing scikit-learn stops the demo at once
    except PCCompileError as exc:
        print(f"pccompile demo: error: {exc}", file=sys.stderr)
        return 2
    return _demo(data)


def _demo(data) -> int:
    import torchvision

    start = time.perf_counter()
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

    print("== 2. The main job on the embedded digits: BP, Z-IL and IL side by side ==")
    ok = _train_side_by_side(OUT, data)
    print(f"demo took {time.perf_counter() - start:.0f} s")
    return 0 if res.passed and ok else 1


def _train_side_by_side(out: Path, data, epochs: int = 8) -> bool:
    """``pccompile train`` twice from the same initial weights and batches: Z-IL with a BP copy
    alongside (``--compare bp``), and IL; a table per epoch and one picture of all three."""
    runs = {}
    for rule, opts, optim in RUNS:
        torch.manual_seed(0)  # the same initial weights for every run
        cfg = TrainConfig(
            rule=rule,
            rule_options=opts,
            **optim,
            lr_schedule="cosine",
            epochs=epochs,
            compare_bp=rule == "zil",
        )
        print(f"{rule}{' and bp' if cfg.compare_bp else ''}: {_optim_text(cfg)}", flush=True)
        runs[rule] = fit(ResidualCNN(1, data.num_classes), data, cfg, out / rule, force=True)
    zil, il = runs["zil"].metrics, runs["il"].metrics
    print(
        f"{'epoch':>5}  {'bp acc':>7}  {'zil acc':>7}  {'il acc':>7}  {'|zil-bp|':>9}  "
        f"{'seconds: bp':>11} {'zil':>6} {'il':>6}"
    )
    for z, i in zip(zil, il):
        print(
            f"{z['epoch']:>5}  {z['bp_test_acc']:>7.3f}  {z['test_acc']:>7.3f}  "
            f"{i['test_acc']:>7.3f}  {z['max_param_diff']:>9.1e}  "
            f"{z['bp_seconds']:>11.2f} {z['seconds']:>6.2f} {i['seconds']:>6.2f}"
        )
    bp = [
        {"epoch": z["epoch"], "train_loss": z["bp_train_loss"], "test_acc": z["bp_test_acc"]}
        for z in zil
    ]
    picture = out / "curves.png"
    try:
        plot_runs({"bp": bp, "zil": zil, "il": il}, picture)
        print(f"curves: {picture}  (Z-IL lies on BP's line; IL, 20 inference steps, close below)")
    except ConfigError as exc:  # matplotlib is an extra: the table above is the result
        print(f"no curves: {exc}")
    return all(z["max_param_diff"] == 0.0 for z in zil)


def _optim_text(cfg: TrainConfig) -> str:
    extra = f", momentum {cfg.momentum:g}" if cfg.optimizer == "sgd" else ""
    return f"{cfg.optimizer} lr {cfg.lr:g}{extra}, {cfg.lr_schedule} decay, {cfg.epochs} epochs"


if __name__ == "__main__":
    raise SystemExit(main())
