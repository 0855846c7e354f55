"""The learning step in ONNX (issue 27): a training run inside onnxruntime, the graph's size, and
one step's time in onnxruntime against ``pcm.learn``.

What it runs
    * ``run``: one epoch of scikit-learn's digits (the train split of ``pccompile.data.digits``,
      batches of ``--batch``, the last partial batch dropped: the graph's shapes are static) on
      a small CNN with BatchNorm (train mode) and a residual join. The same initial weights are
      trained twice: by ``pcm.learn`` (Z-IL) and ``torch.optim.SGD``, and by a numpy SGD loop
      calling the exported ``learn`` graph in onnxruntime (``w -= lr * grad.w``, buffers from
      the ``new.`` outputs). Reported: the largest relative difference of every parameter and
      buffer at the end (``max |ort - torch| / max |torch|`` per tensor), the test accuracy and
      the last loss of both.
    * ``time``: per model (the test file's ``mlp``, ``cnn``, ``block``, ``attention`` at batch
      32, the digits CNN, torchvision's resnet18 at batch 8 on 64x64 images), the graph's
      node count, file size and nodes per phase, then one step timed in rounds that alternate
      ``session.run`` and ``pcm.zero_grad(); pcm.learn(...)`` on the same batch (each round runs
      both, in turn, so machine drift hits both alike); median, IQR, and the ratio. One thread
      for both (``torch.set_num_threads(1)``, ORT ``intra_op_num_threads=1``).

No assertion on times anywhere; the numbers are printed as markdown and written as JSON
(``--json``, default ``benchmarks/results/onnx_learn.json``). ``--quick``: a few batches and
rounds (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pccompile  # noqa: E402
from pccompile.data import digits  # noqa: E402
from pccompile.io.onnx import export_onnx  # noqa: E402


class DigitsCNN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, a residual conv, a strided conv, a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = h + torch.tanh(self.conv2(h))
        return self.fc(F.relu(self.conv3(h)).flatten(1))


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export(pcm, x, y, path: Path):
    return export_onnx(pcm, path, (x,), "learn", target=y, loss_fn=F.cross_entropy, overwrite=True)


def training_run(tmp: Path, batch: int, lr: float, quick: bool) -> dict:
    x_tr, y_tr, x_te, y_te = digits(seed=0)
    n = (len(x_tr) // batch) * batch
    batches = [(x_tr[i : i + batch], y_tr[i : i + batch]) for i in range(0, n, batch)]
    if quick:
        batches = batches[:3]
    torch.manual_seed(0)
    pcm = pccompile.convert(DigitsCNN(), batches[0][0])
    res = export(pcm, *batches[0], tmp / "digits.onnx")
    sess = session(tmp / "digits.onnx")
    params = {k: p.detach().numpy().copy() for k, p in pcm.named_parameters()}
    state = {**params, **{k: b.numpy().copy() for k, b in pcm.named_buffers()}}
    losses_ort = []
    t0 = time.perf_counter()
    for x, y in batches:
        feed = {k: state[k] for k in res.input_names[2:]}
        feed[res.input_names[0]], feed[res.input_names[1]] = x.numpy(), y.numpy()
        out = dict(zip(res.output_names, sess.run(None, feed)))
        losses_ort.append(float(out["loss"]))
        for k in params:
            state[k] = state[k] - np.float32(lr) * out[f"grad.{k}"]
        for k in res.output_names:
            if k.startswith("new."):
                state[k[4:]] = out[k]
    ort_s = time.perf_counter() - t0
    opt = torch.optim.SGD(pcm.parameters(), lr=lr)
    losses_pt = []
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad()
        losses_pt.append(pcm.learn(x, target=y, loss_fn=F.cross_entropy).loss)
        opt.step()
    pt_s = time.perf_counter() - t0
    diffs = {}
    for k, t in pcm.state_dict().items():
        t64 = t.double().numpy()
        diffs[k] = float(
            np.abs(state[k].astype(np.float64) - t64).max() / max(np.abs(t64).max(), 1e-30)
        )
    pcm.eval()
    with torch.no_grad():
        acc_pt = float((pcm(x_te).argmax(1) == y_te).float().mean())
    # the ONNX-trained weights in a copy of the model, evaluated the same way
    twin = pccompile.convert(DigitsCNN(), batches[0][0])
    twin.load_state_dict({k: torch.from_numpy(np.asarray(state[k])) for k in state})
    twin.eval()
    with torch.no_grad():
        acc_ort = float((twin(x_te).argmax(1) == y_te).float().mean())
    return {
        "model": "DigitsCNN (conv-bn-relu, residual conv, strided conv, linear)",
        "steps": len(batches),
        "batch": batch,
        "lr": lr,
        "max_rel_diff": max(diffs.values()),
        "worst_tensor": max(diffs, key=diffs.get),
        "per_tensor": diffs,
        "last_loss_ort": losses_ort[-1],
        "last_loss_torch": losses_pt[-1],
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses_ort, losses_pt)),
        "test_acc_ort": acc_ort,
        "test_acc_torch": acc_pt,
        "epoch_seconds_ort": ort_s,
        "epoch_seconds_torch": pt_s,
    }


def workloads(quick: bool):
    """(name, model, x, y): the test file's four small models at batch 32, the digits CNN, and
    (not with --quick) torchvision's resnet18 at batch 8 on 64x64 images."""
    from test_onnx_learn import MODELS, batch, build

    for name in MODELS:
        yield (name, build(name), *batch(name, n=32))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    yield "digits-cnn", DigitsCNN(), torch.randn(32, 1, 8, 8, generator=g), torch.arange(32) % 10
    if not quick:
        import torchvision

        torch.manual_seed(0)
        net = torchvision.models.resnet18(num_classes=10)
        yield "resnet18", net, torch.randn(8, 3, 64, 64, generator=g), torch.arange(8) % 10


def time_steps(tmp: Path, rounds: int, quick: bool) -> list[dict]:
    from test_onnx_learn import feed_of

    rows = []
    for name, net, x, y in workloads(quick):
        pcm = pccompile.convert(net, x)
        path = tmp / f"{name}.onnx"
        res = export(pcm, x, y, path)
        sess = session(path)
        feed = feed_of(res, pcm, x, y)
        state = {k: v.clone() for k, v in pcm.state_dict().items()}

        def torch_step(pcm=pcm, x=x, y=y):
            pcm.zero_grad(set_to_none=True)
            pcm.learn(x, target=y, loss_fn=F.cross_entropy)

        def ort_step(sess=sess, feed=feed):
            sess.run(None, feed)

        for _ in range(3):  # warm-up, both
            torch_step()
            ort_step()
        t_ort, t_pt = [], []
        for _ in range(rounds):
            for fn, out in ((ort_step, t_ort), (torch_step, t_pt)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        pcm.load_state_dict(state)
        rows.append(
            {
                "model": name,
                "batch": int(x.shape[0]),
                "params": sum(p.numel() for p in pcm.parameters()),
                "depth": pcm.plan.depth,
                "nodes": res.nodes,
                "file_bytes": os.path.getsize(path),
                "phases": res.phases,
                "ort_ms": _stats(t_ort),
                "torch_ms": _stats(t_pt),
                "ratio": statistics.median(t_ort) / statistics.median(t_pt),
                "rounds": rounds,
            }
        )
    return rows


def _stats(ts: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in ts)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [ms[0], 0, ms[-1]]
    return {"median": statistics.median(ms), "q1": q[0], "q3": q[2]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "onnx_learn.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run = training_run(tmp, args.batch, args.lr, args.quick)
        rows = time_steps(tmp, 5 if args.quick else args.rounds, args.quick)
    load = os.getloadavg()
    print(
        f"## Training inside onnxruntime: {run['steps']} SGD steps (batch {run['batch']}, "
        f"lr {run['lr']}) of digits\n"
    )
    print("| | onnxruntime | pcm.learn + torch.optim.SGD |\n|---|---|---|")
    print(f"| last batch loss | {run['last_loss_ort']:.6f} | {run['last_loss_torch']:.6f} |")
    print(f"| test accuracy | {run['test_acc_ort']:.4f} | {run['test_acc_torch']:.4f} |")
    print(f"| epoch time (s) | {run['epoch_seconds_ort']:.2f} | {run['epoch_seconds_torch']:.2f} |")
    print(
        f"\nlargest relative difference of a parameter/buffer at the end: "
        f"{run['max_rel_diff']:.2e} ({run['worst_tensor']}); largest loss difference over the "
        f"epoch: {run['max_loss_diff']:.2e}\n"
    )
    print("## One learn step: onnxruntime vs pcm.learn (ms, median [IQR], one thread)\n")
    print("| model | batch | params | depth | ONNX nodes | file | ORT | pcm.learn | ORT / learn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, t = r["ort_ms"], r["torch_ms"]
        print(
            f"| {r['model']} | {r['batch']} | {r['params']} | {r['depth']} | {r['nodes']} | "
            f"{r['file_bytes'] / 1024:.1f} KiB | {o['median']:.3f} [{o['q1']:.3f}, {o['q3']:.3f}]"
            f" | {t['median']:.3f} [{t['q1']:.3f}, {t['q3']:.3f}] | {r['ratio']:.2f} |"
        )
    print(f"\nload average after the run: {load[0]:.2f} (shared machine)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": run, "steps": rows, "loadavg": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
