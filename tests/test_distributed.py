"""Data-parallel PC training (pccompile.distributed) on 2 gloo CPU ranks against one process.

One spawn of 2 ranks runs every case (imports dominate its cost); each case trains from the
same init on the same global batches as the one-process reference computed here, in float64,
and the ranks' parameters, buffers and last gradients must equal it to ~1e-12.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.distributed import (
    LEAF_MODULES,
    DataParallel,
    GlobalDropout,
    global_layers,
    world_size,
)
from pccompile.errors import ConfigError
from pccompile.train import ResidualCNN

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)

WORLD = 2
TOL = 1e-12


class Block(nn.Module):
    """A pre-LayerNorm transformer block (hand-written attention, dropout) and a linear head."""

    def __init__(self, d: int = 16, heads: int = 2, classes: int = 5, p: float = 0.1):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
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


def _cnn() -> nn.Module:
    return ResidualCNN(1, 10, width=6)


def _block() -> nn.Module:
    return Block()


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=4)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


MODELS = {
    "cnn": (_cnn, (1, 8, 8), 10),
    "block": (_block, (6, 16), 5),
    "mlp": (_mlp, (5,), 3),
    "resnet18": (_resnet18, (3, 16, 16), 4),
}
EFFICIENT, FAITHFUL = ("zil", {"mode": "efficient"}), ("zil", {"mode": "faithful"})
IPC_LR = ("ipc", {"lr": 0.05, "steps": 4, "gamma": 0.2})  # weights move inside inference
# name -> model, (rule, options), micro-batches per step
CASES = {
    "cnn-efficient": ("cnn", EFFICIENT, 1),
    "cnn-faithful-accum": ("cnn", FAITHFUL, 2),
    "cnn-efficient-accum": ("cnn", EFFICIENT, 3),
    "block-efficient": ("block", EFFICIENT, 1),
    "block-faithful-accum": ("block", FAITHFUL, 2),
    "mlp-ipc-lr-accum": ("mlp", IPC_LR, 2),
}
SLOW_CASES = {"resnet18-efficient-accum": ("resnet18", EFFICIENT, 2)}
STEPS, BATCH = 3, 8  # optimizer steps; global micro-batch


def train_case(case: str, overlap: bool = True, sync: bool = True) -> dict:
    """Train one case from the same init on the same global batches: data-parallel when a
    process group is up (this rank's state), one process otherwise. float64, SGD + momentum."""
    name, (rule, options), accum = {**CASES, **SLOW_CASES}[case]
    make, shape, classes = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    g = torch.Generator().manual_seed(1)
    batches = [
        [
            (
                torch.randn(BATCH, *shape, generator=g, dtype=torch.float64),
                torch.randint(0, classes, (BATCH,), generator=g),
            )
            for _ in range(accum)
        ]
        for _ in range(STEPS)
    ]
    leaves: tuple = ()
    if world_size() > 1:
        model, leaves = global_layers(model), LEAF_MODULES
    n, r = world_size(), dist.get_rank() if world_size() > 1 else 0
    shard = lambda t: t[r * len(t) // n : (r + 1) * len(t) // n]  # noqa: E731
    pcm = pccompile.convert(model, shard(batches[0][0][0]), rule, leaf_modules=leaves, **options)
    dp = DataParallel(pcm, overlap=overlap, first_bucket_mb=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(2)  # the dropout masks' stream, the same on every rank
    overlapped = []
    for step in batches:
        opt.zero_grad()
        for i, (x, y) in enumerate(step):
            if i < accum - 1 or not sync:
                with dp.no_sync():
                    dp.learn(shard(x), target=shard(y), loss_fn=F.cross_entropy)
            else:
                dp.learn(shard(x), target=shard(y), loss_fn=F.cross_entropy)
                overlapped.append(dp.overlapped)
        opt.step()
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {  # None where the rule applied its updates itself (iPC with lr > 0)
            k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()
        },
        "rng": torch.get_rng_state(),
        "overlapped": overlapped,
    }


def train_sharded() -> dict:
    """The transformer block (dropout on) with Adam, 2 steps: sharded over the ranks when a
    process group is up (whole state gathered), one process otherwise."""
    from pccompile.sharded import ShardedDataParallel

    torch.manual_seed(0)
    model = _block().double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(BATCH, 6, 16, generator=g, dtype=torch.float64),
         torch.randint(0, 5, (BATCH,), generator=g))
        for _ in range(2)
    ]  # fmt: skip
    leaves: tuple = ()
    sharded = world_size() > 1
    if sharded:
        model, leaves = global_layers(model), LEAF_MODULES
    n, r = world_size(), dist.get_rank() if sharded else 0
    shard = lambda t: t[r * len(t) // n : (r + 1) * len(t) // n]  # noqa: E731
    pcm = pccompile.convert(model, shard(batches[0][0]), leaf_modules=leaves)
    total = sum(p.numel() for p in model.parameters())
    sdp = ShardedDataParallel(pcm) if sharded else None
    opt = torch.optim.Adam(sdp.parameters() if sharded else model.parameters(), lr=1e-2)
    torch.manual_seed(2)
    for x, y in batches:
        opt.zero_grad()
        if sharded:
            sdp.learn(shard(x), target=shard(y), loss_fn=F.cross_entropy)
            grads = sdp.full_grads()
        else:
            pcm.learn(x, target=y, loss_fn=F.cross_entropy)
            grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
    out = {"grads": dict(enumerate(grads)), "total": total}
    if sharded:
        out["state"] = sdp.full_state_dict()
        out["held"] = sum(p.numel() for p in model.parameters())  # between steps: none
        out["shards"] = sum(s.numel() for s in sdp.parameters())
        out["adam"] = sum(t.numel() for st in opt.state.values() for t in st.values() if t.ndim)
        out["n_params"] = len(sdp.parameters())
    else:
        out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def _checks() -> dict:
    """Rank-side checks: refusals, no_sync's collectives, overlap == no overlap bitwise."""
    out: dict = {}
    model = _cnn().double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for what, make in {
        "convert(DDP(model))": lambda: pccompile.convert(
            nn.parallel.DistributedDataParallel(model), x
        ),
        "DDP(pcm)": lambda: nn.parallel.DistributedDataParallel(pccompile.convert(model, x)),
    }.items():
        try:
            make()
            out[what] = None
        except ConfigError as exc:
            out[what] = str(exc)
    pcm = pccompile.convert(nn.Linear(3, 2).double(), torch.randn(2, 3, dtype=torch.float64))
    try:
        DataParallel(pcm).learn(
            torch.randn(2, 3, dtype=torch.float64),
            target=torch.randn(2, 2, dtype=torch.float64),
            loss_fn=F.mse_loss,
            rule="ipc",
            lr=0.1,
            compile=True,
        )
        out["ipc-lr"] = None
    except ConfigError as exc:
        out["ipc-lr"] = str(exc)
    # collectives of one accumulated step (3 micro-batches) of a model with buffers
    calls = {"broadcast": 0, "all_reduce": 0}
    real = {k: getattr(dist, k) for k in calls}

    def counting(kind):
        def call(*a, **k):
            calls[kind] += 1
            return real[kind](*a, **k)

        return call

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    pcm = pccompile.convert(net, torch.randn(2, 3, dtype=torch.float64))  # no global layers
    dp = DataParallel(pcm, overlap=False)
    for k in calls:
        setattr(dist, k, counting(k))
    try:
        for i in range(3):
            xb = torch.randn(2, 3, dtype=torch.float64)
            yb = torch.randn(2, 2, dtype=torch.float64)
            if i < 2:
                with dp.no_sync():
                    dp.learn(xb, target=yb, loss_fn=F.mse_loss)
            else:
                dp.learn(xb, target=yb, loss_fn=F.mse_loss)
    finally:
        for k, f in real.items():
            setattr(dist, k, f)
    out["calls"] = calls
    out["buffers"] = len(list(net.buffers()))
    out["overlap-off"] = train_case("cnn-efficient", overlap=False)
    out["unsynced"] = train_case("block-efficient", sync=False)
    return out


def _worker(r: int, init: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=WORLD)
    try:
        results = {case: train_case(case) for case in CASES}
        results["checks"] = _checks()
        results["sharded"] = train_sharded()
        torch.save(results, f"{out}.{r}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'store'}"
        out = str(Path(tmp) / "result")
        mp.spawn(_worker, args=(init, out), nprocs=WORLD, join=True)
        return [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]


def _max_diff(a: dict, b: dict, relative: bool = False) -> float:
    """The largest absolute difference over the tensors (``relative``: per tensor, divided by
    the tensor's largest magnitude); None-ness must agree, integer tensors must be equal."""
    assert a.keys() == b.keys()
    assert all((a[k] is None) == (b[k] is None) for k in a)
    a, b = ({k: v for k, v in d.items() if v is not None} for d in (a, b))

    def diff(x: torch.Tensor, y: torch.Tensor) -> float:
        if not x.is_floating_point():
            return float((x != y).any())
        d = float((x.double() - y.double()).abs().max())
        return d / max(float(y.double().abs().max()), 1e-300) if relative else d

    return max((diff(a[k], b[k]) for k in a), default=0.0)


@pytest.mark.filterwarnings("ignore:The energy became non-finite")  # faithful Z-IL's rear
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_float64(ranks, case):
    """3 SGD-momentum steps: every rank holds the same weights, buffers (BatchNorm running
    statistics), last gradients and RNG state as one process on the global batches, to 1e-12;
    the masks of dropout (the block) are one process's masks, split."""
    one = train_case(case)
    for r in range(WORLD):
        got = ranks[r][case]
        assert _max_diff(got["state"], one["state"]) <= TOL, (case, r)
        assert _max_diff(got["grads"], one["grads"]) <= TOL, (case, r)
        assert torch.equal(got["rng"], one["rng"])
    assert all(
        torch.equal(ranks[0][case]["state"][k], ranks[1][case]["state"][k]) for k in one["state"]
    )


def test_falsify_without_reduction(ranks):
    """The equality test can fail: the same ranks never averaging their gradients (each trains
    on its shard) are far from one process."""
    one = train_case("block-efficient")
    for r in range(WORLD):
        assert _max_diff(ranks[r]["checks"]["unsynced"]["state"], one["state"]) > 1e-3


def test_overlap_starts_during_inference_and_changes_nothing(ranks):
    """Under efficient Z-IL the levels' buckets are started inside inference (several per
    step), and the result is bitwise the result without overlap."""
    on, off = ranks[0]["cnn-efficient"], ranks[0]["checks"]["overlap-off"]
    assert min(on["overlapped"]) > 1 and max(off["overlapped"]) == 0
    assert max(ranks[0]["cnn-faithful-accum"]["overlapped"]) == 0  # no level hook there
    for k in on["state"]:
        assert torch.equal(on["state"][k], off["state"][k]), k


def test_no_sync_reduces_and_broadcasts_once(ranks):
    """3 micro-batches, 2 of them under no_sync: one all-reduce bucket and one broadcast per
    buffer, for the whole step."""
    checks = ranks[0]["checks"]
    assert checks["calls"] == {"broadcast": checks["buffers"], "all_reduce": 1}


def test_ddp_and_compiled_moving_ipc_are_refused(ranks):
    checks = ranks[0]["checks"]
    assert "ddp.module" in checks["convert(DDP(model))"]
    assert "pccompile.distributed.DataParallel(pcm)" in checks["DDP(pcm)"]
    assert "drift apart" in checks["ipc-lr"] and "compile=False" in checks["ipc-lr"]


def test_global_dropout_is_dropout_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    torch.manual_seed(1)
    want = nn.Dropout(0.3)(x)
    torch.manual_seed(1)
    assert torch.equal(GlobalDropout(0.3)(x), want)


def test_global_layers_keep_the_models_tensors():
    model = _block().double()
    before = {k: v for k, v in model.state_dict().items()}
    net = global_layers(_cnn().double())
    assert all(
        t.dtype == torch.float64 for n, t in net.state_dict().items() if "num_batches" not in n
    )
    after = global_layers(model).state_dict()
    assert all(after[k] is v or after[k].data_ptr() == v.data_ptr() for k, v in before.items())


def test_sharded_equals_one_process_and_holds_half(ranks):
    """ShardedDataParallel: 2 Adam steps on the transformer block (dropout on) give one
    process's gradients and weights to 1e-12, while each rank holds half of every parameter
    (rounded up) and Adam's moments only for its half; between steps the model holds none."""
    one = train_sharded()
    for r in range(WORLD):
        got = ranks[r]["sharded"]
        assert _max_diff(got["grads"], one["grads"]) <= TOL
        assert _max_diff(got["state"], one["state"]) <= TOL
        assert got["held"] == 0
        assert one["total"] / 2 <= got["shards"] <= one["total"] / 2 + got["n_params"]
        assert got["adam"] == 2 * got["shards"]  # exp_avg and exp_avg_sq of the shards


def _gpt2_sharded() -> dict:
    """A small GPT-2 (torch.export capture), resid/embd dropout on, float64, 2 Adam steps:
    sharded over the ranks when a process group is up, one process otherwise."""
    import transformers

    from pccompile.sharded import ShardedDataParallel

    cfg = transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, use_cache=False,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 50, (4, 8), generator=g),) * 2 for _ in range(2)]
    sharded = world_size() > 1
    n, r = world_size(), dist.get_rank() if sharded else 0
    shard = lambda t: t[r * len(t) // n : (r + 1) * len(t) // n]  # noqa: E731
    if sharded:
        model = global_layers(model)  # GlobalDropout, traced into the export graph

    def loss(out, y):
        return F.cross_entropy(out.logits.reshape(-1, cfg.vocab_size), y.reshape(-1))

    pcm = pccompile.convert(model, shard(data[0][0]), loss_fn=loss)
    sdp = ShardedDataParallel(pcm) if sharded else None
    opt = torch.optim.Adam(sdp.parameters() if sharded else model.parameters(), lr=1e-3)
    torch.manual_seed(2)
    for x, y in data:
        opt.zero_grad()
        if sharded:
            sdp.learn(shard(x), target=shard(y))
            grads = sdp.full_grads()
        else:
            pcm.learn(x, target=y)
            grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
    state = sdp.full_state_dict() if sharded else model.state_dict()
    return {"grads": dict(enumerate(grads)), "state": {k: v.clone() for k, v in state.items()}}


def _slow_worker(r: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=WORLD)
    try:
        results = {case: train_case(case) for case in SLOW_CASES}
        results["gpt2"] = _gpt2_sharded()
        torch.save(results, f"{out}.{r}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def slow_ranks() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'store'}"
        out = str(Path(tmp) / "result")
        mp.spawn(_slow_worker, args=(init, out), nprocs=WORLD, join=True)
        return [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_resnet18_two_ranks_equal_one_process_float64(slow_ranks):
    """torchvision resnet18 (20 BatchNorm layers, GlobalBatchNorm on the ranks), Z-IL, 3
    SGD-momentum steps of 2 accumulated micro-batches, float64: within 1e-11 of one process,
    relative per tensor (seen: 2.2e-12; at 16x16 its last BatchNorms normalise 8 values per
    channel over a 1x1 map, ill-conditioned; at 32x32 and batch 16 the benchmark saw 2.5e-14)."""
    one = train_case("resnet18-efficient-accum")
    for r in range(WORLD):
        got = slow_ranks[r]["resnet18-efficient-accum"]
        assert _max_diff(got["state"], one["state"], relative=True) <= 1e-11
        assert _max_diff(got["grads"], one["grads"], relative=True) <= 1e-11


@pytest.mark.slow
def test_gpt2_sharded_with_dropout_equals_one_process_float64(slow_ranks):
    pytest.importorskip("transformers")
    one = _gpt2_sharded()
    for r in range(WORLD):
        got = slow_ranks[r]["gpt2"]
        assert _max_diff(got["grads"], one["grads"]) <= TOL
        assert _max_diff(got["state"], one["state"]) <= TOL
