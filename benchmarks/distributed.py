"""Data-parallel PC training on 2 gloo CPU ranks against one process (issue 25).

``equality``: each model trains ``--steps`` SGD-momentum steps of Z-IL from the same init on the
same global batches, (a) data-parallel on 2 ranks and (b) in one process, in float64 and in
float32; reported per model, the largest relative difference over the tensors of the state dict
(per tensor ``||a - b|| / ||b||``, and over all tensors together) between

* 2 ranks and one process, float64 (the proof: ~1e-13 if they compute the same thing),
* 2 ranks in float32 and one process in float64 (data-parallel float32's error),
* one process in float32 and in float64 (one process's float32 error, the yardstick: the
  data-parallel float32 error should not be larger),
* 2 ranks and one process, both float32 (at most the two errors added).

``sharded``: GPT-2 124M (``GPT2Config()``, dropout off, float32) trained by Z-IL with Adam,
sharded over 2 ranks (:class:`pccompile.sharded.ShardedDataParallel`) against one process: the
bytes of parameters, gradients and Adam state each holds after a step, its peak RSS, and the
first step's gradients of the two compared.

``overlap``: median time of one data-parallel Z-IL learn step (efficient schedule, torchvision
resnet18 on 32x32 images, float32) with the overlapped all-reduce against the all-reduce after
inference, alternated step by step in the same processes, at global batch 64 and 256; and one
process's step on the global batch.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/distributed.py equality
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/distributed.py overlap --batches 64,256
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/distributed.py sharded     # GPT-2 124M

No assertion: numbers for docs/train.md. The machine may be shared: timing rows give median and
spread over alternated repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pccompile  # noqa: E402
from pccompile.distributed import LEAF_MODULES, DataParallel, global_layers, world_size  # noqa: E402
from pccompile.train import ResidualCNN  # noqa: E402

WORLD = 2


class Block(nn.Module):
    """Pre-LayerNorm transformer block (attention, MLP, dropout) with a classification head."""

    def __init__(self, d: int = 32, heads: int = 4, classes: int = 10, p: float = 0.1):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        h = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(h))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return self.head(x.mean(1))


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


MODELS = {  # name -> factory, input shape, classes, global batch, lr
    "residual-cnn": (lambda: ResidualCNN(1, 10), (1, 8, 8), 10, 32, 0.05),
    "resnet18": (_resnet18, (3, 32, 32), 10, 16, 0.01),
    "transformer-block": (Block, (16, 32), 10, 16, 0.05),
}


def train(
    name: str, dtype: torch.dtype, steps: int, accum: int, mode: str, last_grads: bool = False
) -> dict:
    """This rank's (or one process's) state dict after ``steps`` steps of ``accum``
    micro-batches (no_sync on all but the last); ``last_grads``: the last step's ``.grad``
    instead."""
    make, shape, classes, batch, lr = MODELS[name]
    torch.manual_seed(0)
    model = make().to(dtype)
    g = torch.Generator().manual_seed(1)
    data = [
        [
            (torch.randn(batch, *shape, generator=g).to(dtype),
             torch.randint(0, classes, (batch,), generator=g))
            for _ in range(accum)
        ]
        for _ in range(steps)
    ]  # fmt: skip
    leaves: tuple = ()
    if world_size() > 1:
        model, leaves = global_layers(model), LEAF_MODULES
    n = world_size()
    r = dist.get_rank() if n > 1 else 0
    shard = lambda t: t[r * len(t) // n : (r + 1) * len(t) // n]  # noqa: E731
    pcm = pccompile.convert(model, shard(data[0][0][0]), "zil", mode=mode, leaf_modules=leaves)
    dp = DataParallel(pcm)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    torch.manual_seed(2)
    for step in data:
        opt.zero_grad()
        for i, (x, y) in enumerate(step):
            if i < accum - 1:
                with dp.no_sync():
                    dp.learn(shard(x), target=shard(y), loss_fn=F.cross_entropy)
            else:
                dp.learn(shard(x), target=shard(y), loss_fn=F.cross_entropy)
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if last_grads:
        state = {f"{k}.grad": p.grad.clone() for k, p in model.named_parameters()}
    return state


def rel_diff(a: dict, b: dict) -> tuple[float, str, float]:
    """Per tensor ``||a - b|| / ||b||`` (2-norm): the largest and where; and the same over all
    the floating tensors together."""
    worst, where, num, den = 0.0, "", 0.0, 0.0
    for k in b:
        if not b[k].is_floating_point():
            continue
        d = float((a[k].double() - b[k].double()).norm())
        ref = float(b[k].double().norm())
        num, den = num + d * d, den + ref * ref
        if d / max(ref, 1e-300) > worst:
            worst, where = d / max(ref, 1e-300), k
    return worst, where, (num / max(den, 1e-300)) ** 0.5


def _init(r: int, init: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "The energy became non-finite")
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=WORLD)


def _equality_worker(r: int, init: str, out: str, runs: list) -> None:
    _init(r, init)
    try:
        res = {key: train(*key) for key in runs}
        if r == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


def spawn(fn, *args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(fn, args=(f"file://{Path(tmp) / 's'}", *args), nprocs=WORLD, join=True)


def equality(args: argparse.Namespace) -> None:
    names = args.models.split(",")
    runs = []
    for name in names:
        for dtype in (torch.float64, torch.float32):
            runs.append((name, dtype, args.steps, args.accum, args.mode, args.grads))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ranks.pt")
        t0 = time.perf_counter()
        spawn(_equality_worker, out, runs)
        ranks = torch.load(out, weights_only=False)
        print(f"2 ranks: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    print(
        f"Z-IL mode={args.mode}, {args.steps} steps x {args.accum} micro-batches, SGD momentum "
        f"0.9; {'the last gradients' if args.grads else 'the state dict'}: per tensor "
        f"||a-b||/||b||, the largest (which), and over all tensors together"
    )
    cols = [
        "2 ranks f64 vs 1 f64",
        "2 ranks f32 vs 1 f64",
        "1 f32 vs 1 f64",
        "2 ranks f32 vs 1 f32",
    ]
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in names:
        k64 = (name, torch.float64, args.steps, args.accum, args.mode, args.grads)
        k32 = (name, torch.float32, args.steps, args.accum, args.mode, args.grads)
        one64, one32 = train(*k64), train(*k32)
        pairs = [(ranks[k64], one64), (ranks[k32], one64), (one32, one64), (ranks[k32], one32)]
        cells = []
        for a, b in pairs:
            worst, where, total = rel_diff(a, b)
            cells.append(f"{worst:.1e} ({where}); all {total:.1e}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def _overlap_worker(r: int, init: str, out: str, batches: list, repeats: int) -> None:
    _init(r, init)
    try:
        res = {}
        for batch in batches:
            torch.manual_seed(0)
            model = global_layers(_resnet18())
            x = torch.randn(batch // WORLD, 3, 32, 32)
            y = torch.randint(0, 10, (batch // WORLD,))
            pcm = pccompile.convert(model, x, "zil", mode="efficient", leaf_modules=LEAF_MODULES)
            dps = {"overlap": DataParallel(pcm), "after": DataParallel(pcm, overlap=False)}
            times: dict[str, list[float]] = {k: [] for k in dps}
            early = []
            for i in range(repeats + 1):
                for k, dp in dps.items():
                    pcm.zero_grad(set_to_none=True)
                    dist.barrier()
                    t0 = time.perf_counter()
                    dp.learn(x, target=y, loss_fn=F.cross_entropy)
                    if i:  # the first round warms up
                        times[k].append(time.perf_counter() - t0)
                    if k == "overlap":
                        early.append(dp.overlapped)
            res[batch] = (times, early)
        if r == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


def _one_process(batch: int, repeats: int) -> list[float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _resnet18()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    pcm = pccompile.convert(model, x, "zil", mode="efficient")
    times = []
    for i in range(repeats + 1):
        pcm.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        pcm.learn(x, target=y, loss_fn=F.cross_entropy)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def overlap(args: argparse.Namespace) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.pt")
        spawn(_overlap_worker, out, batches, args.repeats)
        res = torch.load(out, weights_only=False)
    print(f"resnet18 32x32, Z-IL efficient, float32, 1 thread per process, {args.repeats} steps")
    print("| global batch | 1 process | 2 ranks, reduce after | 2 ranks, overlapped | buckets "
          "started in inference | speed-up (overlapped vs 1 process) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    fmt = lambda t: f"{statistics.median(t):.3f}s [{min(t):.3f}-{max(t):.3f}]"  # noqa: E731
    for batch in batches:
        one = _one_process(batch, args.repeats)
        times, early = res[batch]
        sp = statistics.median(one) / statistics.median(times["overlap"])
        print(
            f"| {batch} | {fmt(one)} | {fmt(times['after'])} | {fmt(times['overlap'])} | "
            f"{max(early)} | {sp:.2f}x |",
            flush=True,
        )


def _gpt2(n_layer: int | None, dtype: torch.dtype):
    import transformers

    kw = {} if n_layer is None else {"n_layer": n_layer}
    cfg = transformers.GPT2Config(  # GPT-2 124M unless n_layer says; nothing is downloaded
        use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(dtype), cfg.vocab_size


def _lm_loss(out, y):
    return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _sharded_run(sharded: bool, args: argparse.Namespace) -> dict:
    import resource

    from pccompile.sharded import ShardedDataParallel

    model, vocab = _gpt2(args.n_layer, torch.float32)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    y = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    n = dist.get_world_size() if sharded else 1
    r = dist.get_rank() if sharded else 0
    shard = lambda t: t[r * len(t) // n : (r + 1) * len(t) // n]  # noqa: E731
    t0 = time.perf_counter()
    pcm = pccompile.convert(model, shard(x), loss_fn=_lm_loss)
    convert_s = time.perf_counter() - t0
    sdp = ShardedDataParallel(pcm) if sharded else None
    params = sdp.parameters() if sharded else list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    times = []
    for i in range(args.repeats):
        opt.zero_grad(set_to_none=False)
        t0 = time.perf_counter()
        if sharded:
            sdp.learn(shard(x), target=shard(y))
        else:
            pcm.learn(x, target=y)
        times.append(time.perf_counter() - t0)
        if i == 0:
            grads = sdp.full_grads() if sharded else [p.grad.clone() for p in model.parameters()]
        opt.step()
    opt_state = [t for st in opt.state.values() for t in st.values() if t.ndim]
    held = {
        "parameters": _bytes(params) + (_bytes(model.parameters()) if sharded else 0),
        "gradients": _bytes(p.grad for p in params),
        "optimizer": _bytes(opt_state),
    }
    return {
        "grads": grads,
        "held": held,
        "convert_s": convert_s,
        "step_s": times,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _sharded_worker(r: int, init: str, out: str, args: argparse.Namespace) -> None:
    _init(r, init)
    try:
        res = _sharded_run(True, args)
        torch.save(res, f"{out}.{r}")
    finally:
        dist.destroy_process_group()


def sharded(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "sharded")
        spawn(_sharded_worker, out, args)
        ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]
    torch.set_num_threads(1)
    one = _sharded_run(False, args)
    layers = args.n_layer if args.n_layer is not None else 12
    n = sum(g.numel() for g in one["grads"])
    print(
        f"GPT-2 ({layers} layers, {n / 1e6:.1f}M parameters), float32, Z-IL, Adam, global batch "
        f"{args.batch} x {args.seq} tokens, {args.repeats} steps; bytes of the tensors held "
        "after the last step (parameters, .grad, Adam moments); peak RSS of the process"
    )
    print("| | parameters | gradients | Adam state | total | peak RSS | step |")
    print("|---|---|---|---|---|---|---|")
    mb = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    for name, res in [("1 process", one)] + [(f"rank {r} of 2", x) for r, x in enumerate(ranks)]:
        h = res["held"]
        step = f"{statistics.median(res['step_s']):.2f}s"
        print(
            f"| {name} | {mb(h['parameters'])} | {mb(h['gradients'])} | {mb(h['optimizer'])} | "
            f"{mb(sum(h.values()))} | {res['maxrss_mb']:.0f} MiB | {step} |"
        )
    worst, total_num, total_den = 0.0, 0.0, 0.0
    for a, b in zip(ranks[0]["grads"], one["grads"]):
        d, ref = float((a - b).double().norm()), float(b.double().norm())
        worst = max(worst, d / max(ref, 1e-30))
        total_num, total_den = total_num + d * d, total_den + ref * ref
    print(
        f"first step's gradients, 2 ranks sharded vs 1 process: per tensor ||a-b||/||b|| at "
        f"most {worst:.1e}, over all {(total_num / total_den) ** 0.5:.1e}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("equality")
    e.add_argument("--models", default=",".join(MODELS))
    e.add_argument("--steps", type=int, default=3)
    e.add_argument("--accum", type=int, default=2)
    e.add_argument("--mode", default="efficient", choices=["efficient", "faithful"])
    e.add_argument("--grads", action="store_true", help="compare the last step's .grad")
    o = sub.add_parser("overlap")
    o.add_argument("--batches", default="64,256")
    o.add_argument("--repeats", type=int, default=5)
    sh = sub.add_parser("sharded")
    sh.add_argument("--n-layer", type=int, help="GPT-2's layers (default: GPT-2 124M's 12)")
    sh.add_argument("--batch", type=int, default=2)
    sh.add_argument("--seq", type=int, default=32)
    sh.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Z-IL's value nodes may overflow behind the error front (the updates are unaffected)
    warnings.filterwarnings("ignore", "The energy became non-finite")
    {"equality": equality, "overlap": overlap, "sharded": sharded}[args.what](args)


if __name__ == "__main__":
    main()
