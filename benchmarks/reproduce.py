"""Reproduce the seed's claims and the field's tables on real data, offline, as one page.

Writes ``docs/reproduction.md`` and its figures (``docs/figures/reproduction_*.png``) from one
run, with the commit, the machine, the seeds, what was run and the time taken; every number in
the page comes from the run that wrote it (the run's JSON is kept in
``benchmarks/results/reproduce.json``, and ``--render`` rewrites the page from it).

1. **The seed's claims.** Z-IL and BP (plain autograd on the original module) trained side by side,
   same initial weights, same batches, same optimizer, for whole runs: a VGG-style CNN on
   Fashion-MNIST and a many-to-one GRU on MNIST-1D (unrolled: a vertex per time step; and as one
   layer vertex on torch's fused kernel). Per epoch: both test accuracies, ``max |theta_zil -
   theta_bp|`` over every parameter (0 where bitwise), and the training time as a ratio to BP's.
2. **Why Z-IL's conditions are needed.** The same residual MLP trained by BP and by Z-IL with one
   condition broken: ``ZIL(gamma=0.5)``, ``ZIL(step_offset=1)`` (a vertex read one step late),
   ``ZIL(init="zero")`` (value nodes not started at the feed-forward pass), and
   ``convert(level=False)`` (no identity vertices on the skip edges); the gradient's divergence at
   the first step and the parameters' divergence along the run.
3. **The field's table.** pcx's MLP 784-128-128-128-10 on Fashion-MNIST at pcx's published
   settings (Pinchetti et al. 2025; ``examples/s4_1_discriminative_mode/hps``): squared-error
   output, GELU, T = 5, weights AdamW (lr 2.97e-4, weight decay 1.84e-3, pcx's warm-up cosine
   schedule), value nodes SGD (lr 0.0261, momentum 0.1), batch 128, inputs scaled to [-1, 1];
   BP at those settings and at pcx's BP recipe; iPC at pcx's iPC recipe; every rule in
   ``FIELD_ROWS`` that is registered at run time; seeds averaged; a CNN row; time per epoch.
4. **Depth.** Residual MLPs (width 64) of 8 ... 64 blocks on Fashion-MNIST, BP against IL (and
   the ``DEPTH_ROWS`` available at run time), beside FabricPC's muPC table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/reproduce.py            # the full run (make reproduce)
    python benchmarks/reproduce.py --quick                       # smoke run: a few hundred batches
    python benchmarks/reproduce.py --sections 1 2 --seeds 0      # a part, one seed
    python benchmarks/reproduce.py --render benchmarks/results/reproduce.json   # rewrite the page

Rows are data: a rule added to ``pccompile.rules.RULES`` gets its row in the field's table by one
line in ``FIELD_ROWS`` (or ``DEPTH_ROWS``); a row whose rule is not registered, or whose options
the rule rejects, is left out of the tables and named under "Rows left out".
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from report import git_info, loadavg, machine_info

import pccompile
from pccompile.data import FASHION_MNIST_DIR, fashion_mnist, mnist1d
from pccompile.errors import PCCompileError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "reproduction.md"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "reproduce.json"

# The anchors (docs: ../shared/RESEARCH.md section 3; pcx's time_benchmarking results files).
PCX_FMNIST = {"PC (IL) SE, T=5": 89.88, "BP": 89.83}
FABRICPC_DEPTH = {8: 92.0, 16: 89.7, 32: 85.6, 64: 84.1, 128: 82.2}  # MNIST, muPC, 3 epochs


# ----------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """How much of each section runs. ``None`` sizes mean the whole split."""

    name: str
    fashion_train: int | None = None
    fashion_test: int | None = None
    seed_cnn_epochs: int = 5
    seed_rnn_epochs: int = 30
    mnist1d_samples: int = 5000
    cond_steps: int = 300
    field_mlp_epochs: int = 25
    field_cnn_epochs: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    slow_seeds: tuple[int, ...] | None = None  # the MLP rows marked slow (iPC); None: seeds
    slow_epochs: int | None = None  # their epochs; None: field_mlp_epochs
    cnn_seeds: tuple[int, ...] = (0, 1, 2)
    depth_blocks: tuple[int, ...] = (8, 16, 32, 64)
    depth_epochs: int = 3
    depth_train: int | None = 5000
    sections: tuple[int, ...] = (1, 2, 3, 4)
    rows: tuple[str, ...] = ()  # section 3 only the rows whose "model/label" contains one of these


FULL = Profile("full")
QUICK = Profile(
    "quick",
    fashion_train=512,
    fashion_test=256,
    seed_cnn_epochs=2,
    seed_rnn_epochs=2,
    mnist1d_samples=400,
    cond_steps=6,
    field_mlp_epochs=2,
    field_cnn_epochs=1,
    seeds=(0, 1),
    cnn_seeds=(0,),
    depth_blocks=(2, 4),
    depth_epochs=1,
    depth_train=256,
)


# ------------------------------------------------------------------------------------- models
def vgg(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """A VGG-style CNN for 1x28x28: conv16-pool, conv32-conv32-pool, fc128, fc10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        act(),
        nn.Conv2d(32, 32, 3, padding=1),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        act(),
        nn.Linear(128, 10),
    )


def pcx_mlp(act: type[nn.Module] = nn.GELU) -> nn.Module:
    """pcx's benchmark MLP: 784-128-128-128-10, the activation on the hidden layers."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        act(),
        nn.Linear(128, 128),
        act(),
        nn.Linear(128, 128),
        act(),
        nn.Linear(128, 10),
    )


class GRUClassifier(nn.Module):
    """Many-to-one: nn.GRU over the sequence, a Linear head on the last hidden state."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class ResMLP(nn.Module):
    """An FC-ResNet: Linear(784, w), ``blocks`` blocks ``x + fc2(relu(fc1 x))``, Linear(w, 10)."""

    def __init__(self, blocks: int, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(784, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.blocks(F.relu(self.inp(x.flatten(1))))))


# --------------------------------------------------------------------------------------- data
@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_fashion(profile: Profile, root: Path | None) -> Split:
    """Fashion-MNIST scaled to [-1, 1] (pcx's Normalize(0.5, 0.5)); the profile's subsets."""
    ds = fashion_mnist(root)
    n_tr, n_te = profile.fashion_train, profile.fashion_test
    xtr, ytr = ds.x_train[:n_tr], ds.y_train[:n_tr]
    xte, yte = ds.x_test[:n_te], ds.y_test[:n_te]
    return Split((xtr - 0.5) / 0.5, ytr, (xte - 0.5) / 0.5, yte)


def batches(n: int, batch: int, gen: torch.Generator, drop_last: bool = True):
    perm = torch.randperm(n, generator=gen)
    stop = n - n % batch if drop_last and n >= batch else n
    for k in range(0, stop, batch):
        yield perm[k : k + batch]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    was = model.training
    model.eval()
    hits = sum(
        int((model(x[k : k + chunk]).argmax(1) == y[k : k + chunk]).sum())
        for k in range(0, len(y), chunk)
    )
    model.train(was)
    return 100.0 * hits / len(y)


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def bitwise(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def se_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pcx's squared-error output energy, per sample: 0.5 * ||out - onehot(y)||^2 (batch mean)."""
    return 0.5 * (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1).mean()


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


# ------------------------------------------------------------------ section 1: seed's claims
def lockstep(
    name: str,
    make: Callable[[], nn.Module],
    data: Split,
    *,
    epochs: int,
    batch: int,
    make_opt: Callable,
    seed: int,
    convert_options: dict | None = None,
    bp_on_graph: bool = False,
) -> dict:
    """Train BP and Z-IL side by side, same init and batches; the order of the two alternates
    per batch so drift of a shared machine hits both alike. BP is autograd on the original
    module, or (``bp_on_graph``) autograd through the converted graph's ops: for an unrolled RNN,
    BPTT over the same per-step ops Z-IL runs, instead of torch's fused sequence kernel."""
    torch.manual_seed(seed)
    bp = make()
    zil = copy.deepcopy(bp)
    pcm = pccompile.convert(zil, data.x_train[:batch], **(convert_options or {}))
    bp_forward = pccompile.convert(bp, data.x_train[:batch]) if bp_on_graph else bp
    opt_bp, opt_zil = make_opt(bp.parameters()), make_opt(zil.parameters())
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {
        "name": name,
        "vertices": len(pcm.plan.vertices),
        "depth": pcm.plan.depth,
        "epochs": [],
        "loss_bp": [],
        "loss_zil": [],
    }

    def step_bp(x, y):
        opt_bp.zero_grad()
        loss = F.cross_entropy(bp_forward(x), y)
        loss.backward()
        opt_bp.step()
        return float(loss.detach())

    def step_zil(x, y):
        opt_zil.zero_grad()
        r = pcm.learn(x, target=y, loss_fn=F.cross_entropy)
        opt_zil.step()
        return r.loss

    for epoch in range(epochs):
        t_bp = t_zil = 0.0
        for k, idx in enumerate(batches(len(data.y_train), batch, gen)):
            x, y = data.x_train[idx], data.y_train[idx]
            order = ((step_bp, "bp"), (step_zil, "zil"))
            for fn, who in order if k % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                loss = fn(x, y)
                dt = time.perf_counter() - t0
                if who == "bp":
                    t_bp += dt
                    out["loss_bp"].append(loss)
                else:
                    t_zil += dt
                    out["loss_zil"].append(loss)
        row = {
            "epoch": epoch + 1,
            "acc_bp": accuracy(bp, data.x_test, data.y_test),
            "acc_zil": accuracy(zil, data.x_test, data.y_test),
            "max_diff": max_abs_diff(bp, zil),
            "bitwise": bitwise(bp, zil),
            "seconds_bp": t_bp,
            "seconds_zil": t_zil,
        }
        out["epochs"].append(row)
        log(
            f"  {name} epoch {epoch + 1}: acc bp {row['acc_bp']:.2f} zil {row['acc_zil']:.2f} "
            f"max|diff| {row['max_diff']:.3g} time x{t_zil / t_bp:.2f}"
        )
    out["steps"] = len(out["loss_bp"])
    return out


def seed_claims(profile: Profile, fashion: Split, seed: int, out: list, save: Callable) -> list:
    log("section 1: Z-IL against BP for whole runs")
    seq = mnist1d(profile.mnist1d_samples)
    rnn_data = Split(seq.x_train, seq.y_train, seq.x_test, seq.y_test)
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)  # noqa: E731
    adam = lambda ps: torch.optim.Adam(ps, lr=3e-3)  # noqa: E731
    runs = [
        ("VGG-style CNN, Fashion-MNIST", vgg, fashion, profile.seed_cnn_epochs, 128, sgd, {}),
        (
            "GRU unrolled (a vertex per step), MNIST-1D; BP through the same unrolled ops",
            GRUClassifier,
            rnn_data,
            profile.seed_rnn_epochs,
            100,
            adam,
            {"bp_on_graph": True},
        ),
        (
            "GRU unrolled (a vertex per step), MNIST-1D; BP on nn.GRU's fused kernel",
            GRUClassifier,
            rnn_data,
            profile.seed_rnn_epochs,
            100,
            adam,
            {},
        ),
        (
            "GRU as one layer vertex (fused kernel), MNIST-1D",
            GRUClassifier,
            rnn_data,
            profile.seed_rnn_epochs,
            100,
            adam,
            {"granularity": "layer"},
        ),
    ]
    for name, make, data, epochs, batch, opt, conv in runs:
        r = lockstep(
            name,
            make,
            data,
            epochs=epochs,
            batch=batch,
            make_opt=opt,
            seed=seed,
            convert_options={k: v for k, v in conv.items() if k != "bp_on_graph"},
            bp_on_graph=conv.get("bp_on_graph", False),
        )
        r["bp"] = (
            "autograd through the converted graph"
            if conv.get("bp_on_graph")
            else "autograd on the original module"
        )
        r.update(batch=batch, optimizer="SGD(0.01, momentum 0.9)" if opt is sgd else "Adam(3e-3)")
        r["train_samples"], r["test_samples"] = len(data.y_train), len(data.y_test)
        out.append(r)
        save()
    return out


# ----------------------------------------------------------------- section 2: the conditions
@dataclass(frozen=True)
class Condition:
    label: str
    rule: pccompile.ZIL
    level: bool = True


CONDITIONS = [
    Condition("Z-IL, every condition held", pccompile.ZIL()),
    Condition("gamma = 0.5 (< 1)", pccompile.ZIL(gamma=0.5)),
    Condition("gamma = 0.9 (< 1)", pccompile.ZIL(gamma=0.9)),
    Condition("a vertex read one step late (step_offset=1)", pccompile.ZIL(step_offset=1)),
    Condition("value nodes start at 0, not the forward pass", pccompile.ZIL(init="zero")),
    Condition(
        "no levelling on the residual net (level=False)",
        pccompile.ZIL(mode="faithful"),
        level=False,
    ),
]


def conditions(profile: Profile, fashion: Split, seed: int, out: dict, save: Callable) -> dict:
    log("section 2: breaking Z-IL's conditions")
    batch, rows = 64, []
    out.update(model="ResMLP(2 blocks, width 64)", batch=batch, rows=rows)
    for cond in CONDITIONS:
        torch.manual_seed(seed)
        bp = ResMLP(2, 64)
        pc = copy.deepcopy(bp)
        pcm = pccompile.convert(pc, fashion.x_train[:batch], level=cond.level)
        opt_bp = torch.optim.SGD(bp.parameters(), lr=0.01, momentum=0.9)
        opt_pc = torch.optim.SGD(pc.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(seed)
        curve, first_div, diverged = [], None, None
        idxs = []
        while len(idxs) < profile.cond_steps:
            idxs += list(batches(len(fashion.y_train), batch, gen))
        for k, idx in enumerate(idxs[: profile.cond_steps]):
            x, y = fashion.x_train[idx], fashion.y_train[idx]
            opt_bp.zero_grad()
            F.cross_entropy(bp(x), y).backward()
            opt_pc.zero_grad()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a broken setting may blow the energy up
                pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=cond.rule)
            if k == 0:
                num = sum(float((p.grad - q.grad).abs().sum()) for p, q in _pairs(pc, bp))
                den = sum(float(q.grad.abs().sum()) for _, q in _pairs(pc, bp))
                first_div = num / den
            opt_bp.step()
            opt_pc.step()
            finite = all(bool(torch.isfinite(p).all()) for p in pc.parameters())
            curve.append(max_abs_diff(bp, pc) if finite else float("nan"))
            if not finite and diverged is None:
                diverged = k + 1
        rows.append(
            {
                "label": cond.label,
                "rule": repr(cond.rule),
                "level": cond.level,
                "grad_divergence_step1": first_div,
                "max_diff_final": curve[-1],
                "max_diff_curve": curve,
                "bitwise": bitwise(bp, pc),
                "non_finite_at_step": diverged,
                "acc_bp": accuracy(bp, fashion.x_test, fashion.y_test),
                "acc_pc": accuracy(pc, fashion.x_test, fashion.y_test),
            }
        )
        log(
            f"  {cond.label}: step-1 divergence {first_div:.3g}, max|diff| {curve[-1]:.3g}, "
            f"acc {rows[-1]['acc_pc']:.2f} (bp {rows[-1]['acc_bp']:.2f})"
        )
        save()
    return out


def _pairs(a: nn.Module, b: nn.Module):
    return [(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True)]


# --------------------------------------------------------------- section 3: the field's table
@dataclass(frozen=True)
class Recipe:
    """One of pcx's hyperparameter files (``hps/MLP/FashionMNIST/*.yaml``)."""

    name: str
    act: type[nn.Module]
    loss: str  # "se" | "ce"
    w_lr: float
    w_wd: float
    steps: int = 0
    x_lr: float = 0.0
    x_momentum: float = 0.0


# pcx's files give these to 16 digits; the page quotes them rounded.
PC_SE = Recipe(
    "pcx PC-SE",
    nn.GELU,
    "se",
    w_lr=2.9722106e-4,
    w_wd=1.8383294e-3,
    steps=5,
    x_lr=0.026070879,
    x_momentum=0.1,
)
BP_CE = Recipe("pcx BP-CE", nn.Hardtanh, "ce", w_lr=2.7158235e-4, w_wd=8.7318359e-05)
IPC_SE = Recipe(
    "pcx iPC",
    nn.LeakyReLU,
    "se",
    w_lr=2.6913063e-4,
    w_wd=1.1622141e-2,
    steps=8,
    x_lr=0.79969391,
    x_momentum=0.25,
)


@dataclass
class Ctx:
    """What a row's options are built from at run time."""

    recipe: Recipe
    opt: torch.optim.Optimizer
    depth: int

    def value_optimizer(self):
        r = self.recipe
        return lambda xs: torch.optim.SGD(xs, lr=r.x_lr, momentum=r.x_momentum)


def value_steps(ctx: Ctx) -> dict:
    return {"steps": ctx.recipe.steps, "value_optimizer": ctx.value_optimizer()}


@dataclass(frozen=True)
class Row:
    """One row of a table: a rule (a key of ``pccompile.rules.RULES``, or ``bp``) and how it runs.

    options: ``Ctx -> rule options`` (the value optimiser, iPC's weight optimiser ...).
    convert: extra ``pccompile.convert`` keywords (``parametrization="mupc"`` ...).
    steps_optimizer: the rule steps the weight optimiser itself (iPC with ``optimizer=``).
    models: the field table's models it runs on (``mlp``, ``cnn``).
    slow: runs ``Profile.slow_seeds`` / ``slow_epochs`` on the MLP (a shortened run's knob).
    anchor: pcx's published accuracy for the row (Fashion-MNIST MLP).
    """

    label: str
    rule: str
    recipe: Recipe = PC_SE
    options: Callable[[Ctx], dict] = value_steps
    convert: dict = field(default_factory=dict)
    steps_optimizer: bool = False
    models: tuple[str, ...] = ("mlp",)
    slow: bool = False
    anchor: float | None = None


FIELD_ROWS = [
    Row("BP (the PC row's settings: SE, GELU)", "bp", models=("mlp", "cnn")),
    Row("BP (pcx's BP recipe: CE, hardtanh)", "bp", recipe=BP_CE, anchor=89.83),
    Row("IL (pcx's PC-SE recipe, T=5)", "il", models=("mlp", "cnn"), anchor=89.88),
    Row(
        "iPC (pcx's iPC recipe, T=8)",
        "ipc",
        recipe=IPC_SE,
        options=lambda c: {**value_steps(c), "optimizer": c.opt},
        steps_optimizer=True,
        slow=True,
    ),
    Row("ePC (T=5)", "epc", options=lambda c: {"steps": c.recipe.steps}),
    Row("MCPC (T=5)", "mcpc", options=value_steps),
]

DEPTH_ROWS = [
    Row("BP", "bp"),
    Row("IL (T = depth + 1)", "il", options=lambda c: {"steps": c.depth + 1, "gamma": 0.1}),
    Row(
        "muPC + IL (T = depth + 1)",
        "il",
        options=lambda c: {"steps": c.depth + 1, "gamma": 0.1},
        convert={"parametrization": "mupc"},
    ),
    Row("ePC (T = 8)", "epc", options=lambda c: {"steps": 8}),
]


def available(row: Row) -> str | None:
    """Why ``row`` cannot run here (None: it can)."""
    if row.rule != "bp" and row.rule not in pccompile.rules.RULES:
        return f"rule {row.rule!r} is not registered in this build"
    return None


def warmup_cosine(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """optax.warmup_cosine_decay_schedule as pcx's example sets it: from lr to 1.1 lr linearly
    over the first 10% of the steps, then a cosine down to 0.1 lr at the last step."""
    warm = max(1, int(0.1 * total))

    def factor(step: int) -> float:
        if step < warm:
            return 1.0 + 0.1 * step / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        return 0.1 + (1.1 - 0.1) * 0.5 * (1 + math.cos(math.pi * p))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_row(
    row: Row,
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch: int,
    seed: int,
    make_opt: Callable,
    loss_fn: Callable,
    schedule: bool,
) -> dict:
    """Train ``model`` by ``row``'s rule; per-epoch test accuracy and training seconds."""
    opt = make_opt(model.parameters())
    n_batches = len(data.y_train) // batch
    sched = warmup_cosine(opt, n_batches * epochs) if schedule else None
    pcm, cfg = None, None
    if row.rule != "bp":
        pcm = pccompile.convert(model, data.x_train[:batch], rule=row.rule, **row.convert)
        ctx = Ctx(row.recipe, opt, pcm.plan.depth)
        cfg = pccompile.rules.make_rule(row.rule, **row.options(ctx))
    gen = torch.Generator().manual_seed(seed)
    accs, secs = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in batches(len(data.y_train), batch, gen):
            x, y = data.x_train[idx], data.y_train[idx]
            opt.zero_grad()
            if pcm is None:
                loss_fn(model(x), y).backward()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", pccompile.UnreachedWarning)
                    pcm.learn(x, target=y, loss_fn=loss_fn, rule=cfg)
            if not row.steps_optimizer:
                opt.step()
            if sched is not None:
                sched.step()
        secs.append(time.perf_counter() - t0)
        accs.append(accuracy(model, data.x_test, data.y_test))
        log(f"    {row.label}, epoch {len(accs)}/{epochs}: {accs[-1]:.2f} ({secs[-1]:.1f} s)")
    return {"accs": accs, "seconds": secs, "depth": None if pcm is None else pcm.plan.depth}


def _check_row(row: Row, model: nn.Module, example: torch.Tensor) -> str | None:
    """Build the row's conversion and config once; the error text when the build rejects it."""
    why = available(row)
    if why or row.rule == "bp":
        return why
    try:
        pcm = pccompile.convert(copy.deepcopy(model), example, rule=row.rule, **row.convert)
        opt = torch.optim.SGD(pcm.parameters(), lr=0.0)
        pccompile.rules.make_rule(row.rule, **row.options(Ctx(row.recipe, opt, pcm.plan.depth)))
    except (PCCompileError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def field_table(profile: Profile, fashion: Split, out: dict, save: Callable) -> dict:
    log("section 3: the field's table (pcx's MLP on Fashion-MNIST)")
    out.update(rows=[], left_out=[])
    models = {
        "mlp": ("MLP 784-128-128-128-10", pcx_mlp, profile.field_mlp_epochs, profile.seeds),
        "cnn": ("VGG-style CNN", vgg, profile.field_cnn_epochs, profile.cnn_seeds),
    }
    for key, (title, make, epochs, seeds) in models.items():
        for row in FIELD_ROWS:
            if key not in row.models:
                continue
            if profile.rows and not any(f in f"{key}/{row.label}" for f in profile.rows):
                continue
            r, row_seeds, row_epochs = row.recipe, seeds, epochs
            if key == "mlp" and row.slow:
                row_seeds = profile.slow_seeds or profile.seeds
                row_epochs = profile.slow_epochs or profile.field_mlp_epochs
            why = _check_row(row, make(r.act), fashion.x_train[:128])
            if why:
                out["left_out"].append({"table": "field", "row": row.label, "why": why})
                log(f"  {title} / {row.label}: left out ({why})")
                continue
            runs: list[dict] = []
            out["rows"].append(
                {
                    "model": key,
                    "title": title,
                    "label": row.label,
                    "rule": row.rule,
                    "recipe": _recipe_dict(r),
                    "epochs": row_epochs,
                    "anchor": row.anchor if key == "mlp" else None,
                    "runs": runs,
                }
            )
            for seed in row_seeds:
                torch.manual_seed(seed)
                model = make(r.act)
                res = train_row(
                    row,
                    model,
                    fashion,
                    epochs=row_epochs,
                    batch=128,
                    seed=seed,
                    make_opt=lambda ps, r=r: torch.optim.AdamW(ps, lr=r.w_lr, weight_decay=r.w_wd),
                    loss_fn=se_loss if r.loss == "se" else F.cross_entropy,
                    schedule=True,
                )
                res["seed"] = seed
                runs.append(res)
                log(
                    f"  {title} / {row.label} seed {seed}: best {max(res['accs']):.2f} final "
                    f"{res['accs'][-1]:.2f}, {statistics.median(res['seconds']):.1f} s/epoch"
                )
                save()
    return out


def _recipe_dict(r: Recipe) -> dict:
    d = asdict(r)
    d["act"] = r.act.__name__
    return d


# ---------------------------------------------------------------------------- section 4: depth
def depth(profile: Profile, fashion: Split, seed: int, out: dict, save: Callable) -> dict:
    log("section 4: depth (residual MLPs)")
    n = profile.depth_train
    data = replace(fashion, x_train=fashion.x_train[:n], y_train=fashion.y_train[:n])
    out.update(rows=[], left_out=[], train_samples=len(data.y_train))
    for row in DEPTH_ROWS:
        why = _check_row(row, ResMLP(2), data.x_train[:128])
        if why:
            out["left_out"].append({"table": "depth", "row": row.label, "why": why})
            log(f"  {row.label}: left out ({why})")
            continue
        cells: list[dict] = []
        out["rows"].append({"label": row.label, "rule": row.rule, "cells": cells})
        for blocks in profile.depth_blocks:
            torch.manual_seed(seed)
            model = ResMLP(blocks, 64)
            res = train_row(
                row,
                model,
                data,
                epochs=profile.depth_epochs,
                batch=128,
                seed=seed,
                make_opt=lambda ps: torch.optim.Adam(ps, lr=1e-3),
                loss_fn=F.cross_entropy,
                schedule=False,
            )
            res["blocks"] = blocks
            cells.append(res)
            log(
                f"  {row.label}, {blocks} blocks: acc {res['accs'][-1]:.2f}, "
                f"{statistics.median(res['seconds']):.1f} s/epoch"
            )
            save()
    return out


# ------------------------------------------------------------------------------------- render
def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def merge(runs: list[dict]) -> dict:
    """One result from several runs of parts of the page (later runs' sections win); the page
    lists each part's commit, start, time and command."""
    res: dict[str, Any] = {"parts": []}
    for r in runs:
        for key in SECTION_KEYS:
            if key not in r:
                continue
            if key == "field" and "field" in res:  # runs of other rows or seeds: concatenate
                _merge_rows(res["field"], r["field"])
            elif key == "depth" and "depth" in res:  # runs of other depths: add their cells
                _merge_depths(res["depth"], r["depth"])
            else:
                res[key] = copy.deepcopy(r[key])
        for part in r.get("parts", [_part(r)]):
            res["parts"].append(part)
    first = runs[0]["profile"]
    res["profile"] = {
        **first,
        "sections": sorted({s for r in runs for s in r["profile"]["sections"]}),
        "rows": [],
        "seeds": sorted({s for r in runs for s in r["profile"]["seeds"]}),
        "depth_blocks": sorted({b for r in runs for b in r["profile"]["depth_blocks"]}),
    }
    # runs may split section 3 by rows and seeds, section 4 by depths
    apart = ("sections", "rows", "seeds", "depth_blocks")
    for r in runs[1:]:
        other = {k: v for k, v in r["profile"].items() if k not in apart}
        if other != {k: v for k, v in first.items() if k not in apart}:
            raise SystemExit("--render: the runs were made with different sizes; render apart.")
    res["meta"] = {**runs[0]["meta"], "finished": all(r["meta"].get("finished") for r in runs)}
    return res


SECTION_KEYS = ("seed", "conditions", "field", "depth")


def _merge_depths(into: dict, more: dict) -> None:
    """Section 4 of another run into ``into``: each row gains the depths it lacked."""
    if into["train_samples"] != more["train_samples"]:
        raise SystemExit("--render: section 4 ran on different training subsets in two runs.")
    rows = {x["label"]: x for x in into["rows"]}
    for row in copy.deepcopy(more["rows"]):
        same = rows.get(row["label"])
        if same is None:
            into["rows"].append(row)
            rows[row["label"]] = row
            continue
        have = {c["blocks"] for c in same["cells"]}
        same["cells"] = sorted(
            same["cells"] + [c for c in row["cells"] if c["blocks"] not in have],
            key=lambda c: c["blocks"],
        )
    seen = {x["row"] for x in into["left_out"]}
    into["left_out"] += [x for x in more["left_out"] if x["row"] not in seen]


def _merge_rows(into: dict, more: dict) -> None:
    """Section 3 of another run into ``into``: new rows appended, other seeds of a row added."""
    rows = {(x["model"], x["label"]): x for x in into["rows"]}
    for row in copy.deepcopy(more["rows"]):
        same = rows.get((row["model"], row["label"]))
        if same is None:
            into["rows"].append(row)
            rows[(row["model"], row["label"])] = row
            continue
        if same["epochs"] != row["epochs"]:
            raise SystemExit(
                f"--render: {row['label']} ran {same['epochs']} and {row['epochs']} epochs."
            )
        seeds = {x["seed"] for x in same["runs"]}
        same["runs"] += [x for x in row["runs"] if x["seed"] not in seeds]
        same["runs"].sort(key=lambda x: x["seed"])
    seen = {x["row"] for x in into["left_out"]}
    into["left_out"] += [x for x in more["left_out"] if x["row"] not in seen]


def _part(r: dict) -> dict:
    """One run's record for the page's run table."""
    return {**r["meta"], "sections": r["profile"]["sections"], "rows": r["profile"].get("rows")}


def render(res: dict, out: Path) -> None:
    """Write the page and its figures from a run's results."""
    figdir = out.parent / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figs = _figures(res, figdir)
    m, p = res["meta"], res["profile"]
    rel = lambda f: f"figures/{f.name}"  # noqa: E731
    L: list[str] = []
    w = L.append
    w("# Reproduction: the seed's claims and the field's tables on real data")
    w("")
    if p["name"] == "quick":
        which = "`--quick`: a smoke run"
    elif _is_full(p):
        which = "the full profile"
    else:
        which = "the full profile **shortened** as listed under *What was run*"
    w(
        f"Generated by `benchmarks/reproduce.py` ({which}) — every number below comes from the "
        f"run(s) that wrote this page."
    )
    w("")
    parts = res.get("parts") or [_part(res)]
    w("| run | commit | started (UTC) | minutes | load average at start / end | command |")
    w("|---|---|---|---|---|---|")
    for part in parts:
        secs = part["sections"]
        what = f"section{'s' if len(secs) > 1 else ''} {', '.join(map(str, secs))}"
        if part.get("rows"):
            what += f" (rows {', '.join(part['rows'])})"
        w(
            f"| {what} | `{part['git'].get('commit', '?')[:12]}`{_dirty(part)} | "
            f"{part['started']} | {part['seconds'] / 60:.1f} | {part['load_start']} / "
            f"{part['load_end']} | `{part['command']}` |"
        )
    w("")
    for part in parts:
        if part.get("note"):
            w(f"* {part['note']}")
    if len(parts) > 1:
        w(
            "* The runs above ran as separate processes on this machine at the same time; "
            "`--render` merged their results into this page (later runs' sections replace "
            "earlier ones; section 3's rows are concatenated)."
        )
    w("")
    w("| | |")
    w("|---|---|")
    mc = m["machine"]
    w(
        f"| machine | {mc['cpu']}, {mc['cpu_count']} cores, torch {mc['torch']} with "
        f"{mc['torch_threads']} thread(s), Python {mc['python']} |"
    )
    seeds, cnn_seeds = ", ".join(map(str, p["seeds"])), ", ".join(map(str, p["cnn_seeds"]))
    w(f"| seeds | {seeds} (the CNN row of section 3: {cnn_seeds}) |")
    w(f"| sections run | {', '.join(map(str, p['sections']))} |")
    w("")
    w(_what_was_run(p))
    w("")
    if not m.get("finished", True) and not any(part.get("note") for part in parts):
        w(
            "**This run was cut short** (it saves after every row): the tables hold the rows it "
            "finished, and the seeds and epochs columns say what each row ran."
        )
        w("")
    if res.get("seed"):
        _render_seed(res["seed"], figs, rel, w)
    if res.get("conditions", {}).get("rows"):
        _render_conditions(res["conditions"], figs, rel, w)
    if res.get("field", {}).get("rows"):
        _render_field(res["field"], p, w)
    if res.get("depth", {}).get("rows"):
        _render_depth(res["depth"], p, figs, rel, w)
    left = res.get("field", {}).get("left_out", []) + res.get("depth", {}).get("left_out", [])
    if left:
        w("## Rows left out")
        w("")
        w(
            "Rows of `FIELD_ROWS` / `DEPTH_ROWS` whose rule is not in this build (or rejects "
            "the row's options); they run, with no other change, once it is:"
        )
        w("")
        for x in left:
            w(f"* {x['table']}: {x['row']} — {x['why']}")
        w("")
    w("## Reproducing")
    w("")
    w("```bash")
    w("apt-get install dataset-fashion-mnist        # Fashion-MNIST, offline (31 MB)")
    w("pip install '.[data]'                        # mnist1d's generator (and scikit-learn)")
    w("make reproduce                               # the full run: writes this page")
    w("python benchmarks/reproduce.py --quick       # the smoke run (make test: on fake data)")
    w("```")
    w("")
    out.write_text("\n".join(L))


def _dirty(m: dict) -> str:
    mod = m["git"].get("modified") or []
    return f" (+ uncommitted changes in {len(mod)} file(s) under pccompile/)" if mod else ""


def _full_ref(p: dict) -> dict:
    return json.loads(json.dumps(asdict(replace(FULL, sections=tuple(p["sections"])))))


def _is_full(p: dict) -> bool:
    return p["name"] == "full" and {**p, "rows": []} == _full_ref(p) and not p.get("rows")


def _what_was_run(p: dict) -> str:
    ref, full = _full_ref(p), _is_full(p)

    def v(key: str, fmt=str) -> str:  # the value run, and the full profile's where it differs
        got, want = p[key], ref[key]
        if want is None and key.startswith("slow_"):  # None: as the other rows
            want = ref["field_mlp_epochs"] if key == "slow_epochs" else ref["seeds"]
        return fmt(got) + ("" if got == want else f" (full profile: {fmt(want)})")

    n = lambda x: "all" if x is None else f"the first {x:,}"  # noqa: E731
    ipc = (
        f" (iPC: {v('slow_epochs')} epochs, seeds {v('slow_seeds')})"
        if p["slow_seeds"] or p["slow_epochs"]
        else ""
    )
    bullets = {
        1: f"* Section 1: CNN {v('seed_cnn_epochs')} epochs; GRUs {v('seed_rnn_epochs')} epochs "
        f"on MNIST-1D ({v('mnist1d_samples')} samples, 80/20 split).",
        2: f"* Section 2: {v('cond_steps')} training steps per condition.",
        3: f"* Section 3: MLP {v('field_mlp_epochs')} epochs (pcx: 25), seeds {v('seeds')}{ipc}; "
        f"CNN {v('field_cnn_epochs')} epochs, seeds {v('cnn_seeds')}.",
        4: f"* Section 4: blocks {v('depth_blocks')}, {v('depth_epochs')} epochs on "
        f"{v('depth_train', n)} training images.",
    }
    lines = [
        "**What was run**" + (" (the full profile)" if full else " (NOT the full profile):"),
        "",
        f"* Fashion-MNIST: {v('fashion_train', n)} training images, {v('fashion_test', n)} test "
        f"images.",
    ] + [bullets[k] for k in p["sections"]]
    return "\n".join(lines)


def _render_seed(runs: list[dict], figs: dict, rel, w) -> None:
    w("## 1. The seed's claims: Z-IL trains as BP does, at BP's cost")
    w("")
    w(
        "BP is plain autograd on the original module (for one GRU row: through the same "
        "unrolled ops Z-IL's graph runs, to tell Z-IL's exactness from the fused kernel's "
        "rounding); Z-IL is `pccompile.convert(model, x)` "
        "(rule `zil`, leveled graph, efficient schedule) and `pcm.learn(...)`. Both start from "
        "the same weights, see the same batches and step identical optimizers. "
        "`max |θ_zil − θ_bp|` is over every parameter after each epoch; time is training time "
        "per epoch (the two alternate batch by batch). The unrolled GRU is compared twice: "
        "against BPTT over the same per-step ops (Z-IL's exactness), and against `nn.GRU`'s "
        "fused kernel, whose float32 rounding differs from the unrolled ops' (a kernel "
        "difference, not a PC one)."
    )
    w("")
    if "seed" in figs:
        w(f"![Z-IL on BP's line]({rel(figs['seed'])})")
        w("")
    w(
        "| model | epoch | BP test acc | Z-IL test acc | max \\|θ_zil − θ_bp\\| | bitwise "
        "| time Z-IL / BP |"
    )
    w("|---|---|---|---|---|---|---|")
    for r in runs:
        for e in r["epochs"]:
            ratio = e["seconds_zil"] / e["seconds_bp"]
            w(
                f"| {r['name']} | {e['epoch']} | {e['acc_bp']:.2f} | {e['acc_zil']:.2f} | "
                f"{e['max_diff']:.3g} | {'yes' if e['bitwise'] else 'no'} | {ratio:.2f}× |"
            )
    w("")
    for r in runs:
        eps = r["epochs"]
        ratios = [e["seconds_zil"] / e["seconds_bp"] for e in eps]
        allbit = all(e["bitwise"] for e in eps)
        gap = max(abs(a - b) for a, b in zip(r["loss_bp"], r["loss_zil"]))
        curve = "identical at every step" if gap == 0 else f"differ by up to {gap:.2g}"
        w(
            f"* **{r['name']}** (BP: {r.get('bp', 'autograd on the original module')}; "
            f"{r['vertices']} vertices, depth {r['depth']}; "
            f"{r['train_samples']:,} training samples, batch {r['batch']}, {r['optimizer']}; "
            f"{r['steps']} steps): training-loss curves {curve}; parameters "
            + (
                "**bitwise equal** after every epoch"
                if allbit
                else f"differ by {eps[0]['max_diff']:.2g} after the first epoch and by up to "
                f"{max(e['max_diff'] for e in eps):.2g} later (rounding differences, which "
                f"training amplifies)"
            )
            + f"; Z-IL's epoch costs {statistics.median(ratios):.2f}× BP's (median over epochs)."
        )
    w("")


def _render_conditions(c: dict, figs: dict, rel, w) -> None:
    w("## 2. Why Z-IL's conditions are needed")
    w("")
    w(
        f"A {c['model']} (it has skip edges, so levelling matters) trained by BP and by Z-IL "
        f"with one condition broken; SGD(0.01, momentum 0.9), batch {c['batch']}, the same "
        f"batches. The gradient divergence is DESIGN.md's `Σ|g_pc − g_bp| / Σ|g_bp|` at the "
        f"first step, from equal weights."
    )
    w("")
    if "conditions" in figs:
        w(f"![divergence from BP when a condition is broken]({rel(figs['conditions'])})")
        w("")
    steps = len(c["rows"][0]["max_diff_curve"])
    w(
        f"| setting | gradient divergence, step 1 | max \\|θ_pc − θ_bp\\| after {steps} steps "
        f"| PC test acc | BP test acc |"
    )
    w("|---|---|---|---|---|")
    for r in c["rows"]:
        final = r["max_diff_final"]
        fin = (
            "0 (bitwise)"
            if r["bitwise"]
            else (
                f"{final:.3g}"
                if math.isfinite(final)
                else f"non-finite from step {r['non_finite_at_step']}"
            )
        )
        w(
            f"| {r['label']} | {r['grad_divergence_step1']:.3g} | {fin} | {r['acc_pc']:.2f} | "
            f"{r['acc_bp']:.2f} |"
        )
    w("")
    w(
        "Options used: `ZIL(gamma=...)`; `ZIL(step_offset=1)` reads a level-l vertex's weights "
        'at step l+1; `ZIL(init="zero")` starts the value nodes at 0; '
        '`convert(..., level=False)` with `ZIL(mode="faithful")` runs Z-IL\'s schedule on the '
        "unleveled graph. The last three run on the synchronous loop (every value node at every "
        "step), so the held row's exactness is the faithful loop's as well as the efficient one's."
    )
    w("")


def _render_field(f: dict, p: dict, w) -> None:
    w("## 3. The field's table: pcx's MLP on Fashion-MNIST")
    w("")
    w(
        "pcx's setting (Pinchetti et al., ICLR 2025; `liukidar/pcx` "
        "`examples/s4_1_discriminative_mode/hps/MLP/FashionMNIST/`): batch 128 (last partial "
        "batch dropped), inputs scaled to [-1, 1], weights AdamW with pcx's warm-up cosine "
        "schedule (lr → 1.1 lr over 10% of the steps, cosine to 0.1 lr). PC-SE: GELU, squared-"
        "error output, T = 5, value nodes SGD(0.0261, momentum 0.1), AdamW(2.97e-4, wd 1.84e-3). "
        "BP-CE: hardtanh, cross-entropy, AdamW(2.72e-4, wd 8.73e-5). iPC: leaky ReLU, T = 8, "
        "value nodes SGD(0.80, momentum 0.25), AdamW(2.69e-4, wd 1.16e-2) stepped at every "
        "inference evaluation (pccompile's iPC takes T + 1 evaluations, so 9 weight steps per "
        "batch). Accuracy: test accuracy (%) of the best epoch (pcx reports the "
        "best) and of the last; mean ± std over the seeds."
    )
    w("")
    w(
        "| model | rule | epochs | seeds | best test acc | final test acc | pcx (25 epochs) "
        "| s / epoch |"
    )
    w("|---|---|---|---|---|---|---|---|")
    for r in (r for r in f["rows"] if r["runs"]):
        best = [max(x["accs"]) for x in r["runs"]]
        final = [x["accs"][-1] for x in r["runs"]]
        secs = [statistics.median(x["seconds"]) for x in r["runs"]]
        anchor = f"{r['anchor']:.2f}" if r["anchor"] is not None else "—"
        w(
            f"| {r['title']} | {r['label']} | {r['epochs']} | {len(r['runs'])} | {_ms(best)} | "
            f"{_ms(final)} | {anchor} | {statistics.median(secs):.1f} |"
        )
    w("")
    mlp = {r["label"]: r for r in f["rows"] if r["model"] == "mlp"}
    il = next((r for k, r in mlp.items() if r["rule"] == "il"), None)
    bp = next((r for k, r in mlp.items() if r["rule"] == "bp"), None)
    if il and bp and il["runs"] and bp["runs"]:
        il_best = statistics.mean(max(x["accs"]) for x in il["runs"])
        bp_best = statistics.mean(max(x["accs"]) for x in bp["runs"])
        gap = il_best - bp_best
        w(
            f"IL at pcx's settings: {il_best:.2f} % against pccompile's own BP at the same "
            f"settings {bp_best:.2f} % ({gap:+.2f} points: "
            + ("**within 0.5 point**" if abs(gap) <= 0.5 else "**not within 0.5 point**")
            + f"), and against pcx's PC 89.88 % ({il_best - 89.88:+.2f}) and BP 89.83 %"
            + (
                " — after 25 epochs as pcx ran."
                if il["epochs"] == 25
                else f" — after {il['epochs']} epochs, not pcx's 25: not like for like."
            )
        )
        w("")
    w(
        "Time per epoch is the median training time of an epoch (evaluation excluded) on this "
        "machine, one thread, eager loops. Rows that ran at different times under different "
        "loads (the run table above) are not comparable by these seconds; section 1's ratios, "
        "measured batch by batch in one process, are. pcx's 89.83 % BP is its BP-CE recipe's. "
        "pcx's GPU timing model for reference: a PC epoch ≈ BP epoch × (1 + ~0.5·T)."
    )
    w("")


def _render_depth(d: dict, p: dict, figs: dict, rel, w) -> None:
    w("## 4. Depth: residual MLPs")
    w("")
    w(
        f"FC-ResNets `Linear(784, 64)`, blocks `x + fc2(relu(fc1(x)))`, `Linear(64, 10)`, on "
        f"Fashion-MNIST ({d['train_samples']:,} training images, all test images), Adam(1e-3), "
        f"batch 128, cross-entropy, {p['depth_epochs']} epoch(s), seed {p['seeds'][0]}. IL runs "
        f"T = depth + 1 inference steps (layer vertices), γ = 0.1, so the error reaches every "
        f"layer. FabricPC's numbers are μPC on **MNIST** (an easier data set), 3 epochs of "
        f"60,000 images, T = 6·(blocks + 2): a reference line, not a like-for-like comparison."
    )
    w("")
    if "depth" in figs:
        w(f"![test accuracy against depth]({rel(figs['depth'])})")
        w("")
    blocks = sorted({c["blocks"] for r in d["rows"] for c in r["cells"]})

    def cells(r: dict, fmt: Callable[[dict], str]) -> str:  # "—": a depth that row did not run
        got = {c["blocks"]: c for c in r["cells"]}
        return " | ".join(fmt(got[b]) if b in got else "—" for b in blocks)

    w("| rule | " + " | ".join(f"{b} blocks" for b in blocks) + " |")
    w("|---|" + "---|" * len(blocks))
    for r in d["rows"]:
        accs = cells(r, lambda c: f"{c['accs'][-1]:.2f}")
        w(f"| {r['label']} | {accs} |")
    fab = " | ".join(f"{FABRICPC_DEPTH[b]:.1f}" if b in FABRICPC_DEPTH else "—" for b in blocks)
    w(f"| FabricPC μPC (MNIST) | {fab} |")
    w("")
    w("| rule | " + " | ".join(f"s / epoch, {b} blocks" for b in blocks) + " |")
    w("|---|" + "---|" * len(blocks))
    for r in d["rows"]:
        secs = cells(r, lambda c: f"{statistics.median(c['seconds']):.1f}")
        w(f"| {r['label']} | {secs} |")
    w("")


def _figures(res: dict, figdir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Path] = {}
    if res.get("seed"):
        runs = res["seed"]
        import textwrap

        cols = 2 if len(runs) > 2 else len(runs)
        nrows = -(-len(runs) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.0 * nrows), squeeze=False)
        for ax in axes.flat[len(runs) :]:
            ax.set_visible(False)
        for ax, r in zip(axes.flat, runs):
            ax.plot(r["loss_bp"], color="0.75", lw=3.5, label="BP (autograd)")
            ax.plot(r["loss_zil"], color="C3", lw=0.8, ls="--", label="Z-IL (PC)")
            ax.set_title("\n".join(textwrap.wrap(r["name"], 60)), fontsize=9)
            ax.set_xlabel("training step")
            ax.set_yscale("log")
            md = max(e["max_diff"] for e in r["epochs"])
            label = f"max |θ_zil − θ_bp| = {md:.3g}"
            ax.text(0.98, 0.95, label, transform=ax.transAxes, ha="right", va="top", fontsize=8)
        for row in axes:
            row[0].set_ylabel("training loss")
        axes[0][0].legend(fontsize=8, loc="lower left")
        fig.suptitle("Z-IL on BP's line: the same loss at every step of whole runs", fontsize=10)
        fig.tight_layout()
        figs["seed"] = figdir / "reproduction_seed.png"
        fig.savefig(figs["seed"], dpi=110)
        plt.close(fig)
    if res.get("conditions", {}).get("rows"):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        exact = []
        for i, r in enumerate(res["conditions"]["rows"]):
            ys = [v if v > 0 and math.isfinite(v) else float("nan") for v in r["max_diff_curve"]]
            if all(math.isnan(v) for v in ys):
                exact.append(r["label"])
                continue
            ax.plot(range(1, len(ys) + 1), ys, color=f"C{i}", label=r["label"])
            if r["non_finite_at_step"]:  # the PC run blew up: mark where
                k = r["non_finite_at_step"]
                last = next((v for v in reversed(ys[: k - 1]) if not math.isnan(v)), None)
                if last is not None:
                    ax.plot([k - 1], [last], "x", color=f"C{i}", ms=8, mew=2)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("max |θ_pc − θ_bp|")
        note = "; ".join(exact)
        ax.set_title(
            "Breaking one condition of Z-IL: divergence from BP"
            + (f"\n({note}: 0 at every step, not drawable on a log axis)" if note else "")
            + "\nx: the PC run's weights became non-finite after this step",
            fontsize=9,
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs["conditions"] = figdir / "reproduction_conditions.png"
        fig.savefig(figs["conditions"], dpi=110)
        plt.close(fig)
    if res.get("depth", {}).get("rows"):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for i, r in enumerate(res["depth"]["rows"]):
            b = [c["blocks"] for c in r["cells"]]
            ax.plot(b, [c["accs"][-1] for c in r["cells"]], "o-", color=f"C{i}", label=r["label"])
        fb = sorted(FABRICPC_DEPTH)
        ax.plot(fb, [FABRICPC_DEPTH[k] for k in fb], "k:", label="FabricPC μPC (MNIST)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("residual blocks")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Fashion-MNIST FC-ResNets (width 64)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs["depth"] = figdir / "reproduction_depth.png"
        fig.savefig(figs["depth"], dpi=110)
        plt.close(fig)
    return figs


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smoke run (a few hundred batches)")
    ap.add_argument("--sections", type=int, nargs="+", choices=[1, 2, 3, 4])
    ap.add_argument(
        "--seeds", type=int, nargs="+", help="seeds of section 3 (and the first: 1/2/4)"
    )
    ap.add_argument("--cnn-seeds", type=int, nargs="+")
    ap.add_argument("--mlp-epochs", type=int, help="section 3's MLP epochs (full: 25)")
    ap.add_argument("--cnn-epochs", type=int, help="section 3's CNN epochs (full: 5)")
    ap.add_argument("--rows", nargs="+", help='section 3: only rows matching "model/label" parts')
    ap.add_argument("--slow-seeds", type=int, nargs="+", help="section 3's slow rows (iPC)")
    ap.add_argument("--slow-epochs", type=int, help="section 3's slow rows' epochs")
    ap.add_argument("--rnn-epochs", type=int, help="section 1's GRU epochs (full: 30)")
    ap.add_argument("--cond-steps", type=int, help="section 2's steps (full: 300)")
    ap.add_argument("--depth-epochs", type=int, help="section 4's epochs (full: 3)")
    ap.add_argument("--seed-cnn-epochs", type=int, help="section 1's CNN epochs (full: 5)")
    ap.add_argument("--depth-blocks", type=int, nargs="+")
    ap.add_argument("--depth-train", type=int, help="section 4's training images (full: 5000)")
    ap.add_argument("--fashion-train", type=int, help="training images used (full: all)")
    ap.add_argument(
        "--fashion-mnist",
        type=Path,
        default=None,
        help=f"its IDX folder (default {FASHION_MNIST_DIR})",
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the page (default docs/reproduction.md)"
    )
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="rewrite the page from saved runs (several: runs of different sections, merged)",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.render:
        runs = [json.loads(f.read_text()) for f in args.render]
        render(runs[0] if len(runs) == 1 else merge(runs), args.out)
        return 0
    torch.set_num_threads(args.threads)
    profile = QUICK if args.quick else FULL
    overrides = {
        "sections": tuple(args.sections) if args.sections else None,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "cnn_seeds": tuple(args.cnn_seeds) if args.cnn_seeds else None,
        "field_mlp_epochs": args.mlp_epochs,
        "field_cnn_epochs": args.cnn_epochs,
        "slow_seeds": tuple(args.slow_seeds) if args.slow_seeds else None,
        "rows": tuple(args.rows) if args.rows else None,
        "slow_epochs": args.slow_epochs,
        "seed_rnn_epochs": args.rnn_epochs,
        "cond_steps": args.cond_steps,
        "depth_epochs": args.depth_epochs,
        "seed_cnn_epochs": args.seed_cnn_epochs,
        "depth_blocks": tuple(args.depth_blocks) if args.depth_blocks else None,
        "depth_train": args.depth_train,
        "fashion_train": args.fashion_train,
    }
    profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    t0 = time.time()
    res: dict[str, Any] = {
        "meta": {
            "started": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M}",
            "git": git_info(),
            "machine": machine_info(torch.device("cpu")),
            "load_start": loadavg(),
            "command": "python benchmarks/reproduce.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "profile": json.loads(json.dumps(asdict(profile))),  # as the saved JSON has it
    }
    fashion = load_fashion(profile, args.fashion_mnist)
    seed = profile.seeds[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["meta"]["seconds"] = time.time() - t0
        res["meta"]["load_end"] = loadavg()
        args.json.write_text(json.dumps(res, indent=1))
        render(res, args.out)

    sections = {
        1: ("seed", [], lambda out: seed_claims(profile, fashion, seed, out, save)),
        2: ("conditions", {}, lambda out: conditions(profile, fashion, seed, out, save)),
        3: ("field", {}, lambda out: field_table(profile, fashion, out, save)),
        4: ("depth", {}, lambda out: depth(profile, fashion, seed, out, save)),
    }
    res["meta"]["finished"] = False
    for s in profile.sections:
        key, out, run = sections[s]
        res[key] = out  # filled as it runs, saved after every row: a cut run keeps its rows
        run(out)
        save()
    res["meta"]["finished"] = True
    save()
    log(f"wrote {args.out} and {args.json} in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
