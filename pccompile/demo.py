"""The main job behind ``make demo``.

1. Convert torchvision's resnet18 (weights=None) and show, per parameter, that one Z-IL learn
   step gives autograd's gradients.
2. The main job (``pccompile train``'s library, :func:`pccompile.train.fit`) on scikit-learn's
   embedded digits: a residual CNN trained by Z-IL with a BP copy alongside (same accuracy, the
   same parameters bit for bit) and by IL (20 inference steps: visibly apart); a table per
   epoch and ``demo_out/curves.png`` with the three runs.

Needs the ``data`` extra (scikit-learn) besides the core dependencies:
``pip install 'pccompile[data]'``; ``make demo`` installs it (``.[dev]``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pccompile
from pccompile.data import load_dataset
from pccompile.errors import ConfigError
from pccompile.train import ResidualCNN, TrainConfig, fit
from pccompile.train.curves import plot_runs
from pccompile.verify import verify

OUT = Path("demo_out")


def main() -> int:
    import torchvision

    data = load_dataset("digits")  # first, so a missing scikit-learn stops the demo at once
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
    return 0 if res.passed and ok else 1


def _train_side_by_side(out: Path, data, epochs: int = 8) -> bool:
    """``pccompile train`` twice from the same initial weights and batches: Z-IL with a BP copy
    alongside (``--compare bp``), and IL; a table per epoch and one picture of all three."""
    runs = {}
    for rule, opts in (("zil", {}), ("il", {"steps": 20, "gamma": 0.1})):
        torch.manual_seed(0)  # the same initial weights for every run
        cfg = TrainConfig(
            rule=rule,
            rule_options=opts,
            optimizer="sgd",  # the PC papers' optimizer; Adam's per-parameter scaling turns IL's
            lr=0.05,  # noisy gradients on this BatchNorm net into full-size steps
            momentum=0.9,
            epochs=epochs,
            compare_bp=rule == "zil",
        )
        runs[rule] = fit(ResidualCNN(1, data.num_classes), data, cfg, out / rule, force=True)
    zil, il = runs["zil"].metrics, runs["il"].metrics
    print(
        f"{'epoch':>5}  {'bp acc':>7}  {'zil acc':>7}  {'il acc':>7}  {'|zil-bp|':>9}  "
        f"{'s/epoch bp, zil, il':>20}"
    )
    for z, i in zip(zil, il):
        print(
            f"{z['epoch']:>5}  {z['bp_test_acc']:>7.3f}  {z['test_acc']:>7.3f}  "
            f"{i['test_acc']:>7.3f}  {z['max_param_diff']:>9.1e}  "
            f"{z['bp_seconds']:>6.2f} {z['seconds']:>6.2f} {i['seconds']:>6.2f}"
        )
    bp = [
        {"epoch": z["epoch"], "train_loss": z["bp_train_loss"], "test_acc": z["bp_test_acc"]}
        for z in zil
    ]
    picture = out / "curves.png"
    try:
        plot_runs({"bp": bp, "zil": zil, "il": il}, picture)
        print(f"curves: {picture}  (Z-IL lies on BP's line; IL, 20 inference steps, apart)")
    except ConfigError as exc:  # matplotlib is an extra: the table above is the result
        print(f"no curves: {exc}")
    return all(z["max_param_diff"] == 0.0 for z in zil)


if __name__ == "__main__":
    raise SystemExit(main())
