"""What the guards (:mod:`pccompile.guards`) cost a training loop that changes nothing.

Before every ``forward``/``learn`` a PCModule checks that the model is still in the state its
plan was captured for. This script measures that check against the step it guards, on a small
MLP and on resnet18 (torchvision), in one process:

* ``check``: ``Guards.check()`` alone, timed over ``--inner`` calls per sample (median of
  ``--samples`` samples).
* ``learn`` / ``learn-unguarded`` / ``bp``: one ``pcm.learn(..., rule="zil")`` step, the same
  step with the check replaced by ``True`` (what the step cost before the guards), and
  ``learn(rule="bp")`` (the original module and ``loss.backward()``), alternated round by round
  (the order rotating) so drift of the (shared) machine affects all three alike. Medians and
  inter-quartile ranges.

The overhead is reported two ways: ``check / learn`` (direct) and ``(learn - unguarded) /
unguarded`` (the difference of two noisy medians; on a shared machine it can come out
negative). Run: ``python benchmarks/guard_overhead.py [--rounds N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile


def _mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    return net, torch.randn(32, 64), torch.randint(0, 10, (32,))


def _resnet18() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return (
        torchvision.models.resnet18(num_classes=10),
        torch.randn(4, 3, 32, 32),
        torch.randint(0, 10, (4,)),
    )


def _true() -> bool:
    return True


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [min(xs), statistics.median(xs), max(xs)]
    return q[0], statistics.median(xs), q[2]


def measure(name: str, make, rounds: int, samples: int, inner: int) -> dict:
    model, x, y = make()
    pcm = pccompile.convert(model, x)
    g = pcm._pc_plans.entries[0][0]
    real_check = g.check

    def step(rule: str, guarded: bool = True) -> float:
        pcm.zero_grad(set_to_none=True)
        if not guarded:
            g.check = _true
        try:
            t = time.perf_counter()
            pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=rule)
            return time.perf_counter() - t
        finally:
            g.check = real_check

    for _ in range(3):  # warm-up
        step("zil"), step("zil", False), step("bp")
    times: dict[str, list[float]] = {"learn": [], "learn-unguarded": [], "bp": []}
    runs = [("learn", "zil", True), ("learn-unguarded", "zil", False), ("bp", "bp", True)]
    for r in range(rounds):  # the order rotates: no variant always follows the same one
        for key, rule, guarded in runs[r % 3 :] + runs[: r % 3]:
            times[key].append(step(rule, guarded))
    checks = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(inner):
            g.check()
        checks.append((time.perf_counter() - t) / inner)
    assert pcm.recaptures == 0, "a loop that changes nothing must not capture again"
    out = {"model": name, "rounds": rounds, "guarded_modules": len(g.modules)}
    out["guarded_attributes"] = len(g.reads)
    for k, v in {**times, "check": checks}.items():
        lo, med, hi = _quartiles(v)
        out[k] = {"median_s": med, "q1_s": lo, "q3_s": hi}
    out["check_over_learn"] = out["check"]["median_s"] / out["learn"]["median_s"]
    unguarded = out["learn-unguarded"]["median_s"]
    out["learn_vs_unguarded"] = (out["learn"]["median_s"] - unguarded) / unguarded
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200, help="rounds for the small MLP")
    ap.add_argument("--resnet-rounds", type=int, default=15)
    ap.add_argument("--samples", type=int, default=21)
    ap.add_argument("--inner", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure("mlp 64-128-128-10, batch 32", _mlp, args.rounds, args.samples, args.inner)]
    if not args.skip_resnet:
        results.append(
            measure("resnet18, batch 4x3x32x32", _resnet18, args.resnet_rounds, args.samples, 200)
        )
    for r in results:
        us = {k: 1e6 * r[k]["median_s"] for k in ("check", "learn", "learn-unguarded", "bp")}
        iqr = {k: 1e6 * (r[k]["q3_s"] - r[k]["q1_s"]) for k in ("check", "learn", "bp")}
        print(
            f"{r['model']}: {r['guarded_modules']} modules, {r['guarded_attributes']} attributes "
            f"guarded\n  check {us['check']:.1f} us (IQR {iqr['check']:.1f}); learn zil "
            f"{us['learn']:.0f} us (IQR {iqr['learn']:.0f}); unguarded {us['learn-unguarded']:.0f}"
            f" us; bp {us['bp']:.0f} us (IQR {iqr['bp']:.0f})\n  check/learn "
            f"{100 * r['check_over_learn']:.2f}%; (learn - unguarded)/unguarded "
            f"{100 * r['learn_vs_unguarded']:+.2f}%"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
