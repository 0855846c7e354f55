"""Random programs against the differential checker (issue 10).

Hypothesis draws a small float64 program -- a stem ``Linear`` followed by a list of blocks, each
one pattern from issue 10 -- builds an ``nn.Module`` whose ``forward`` interprets it (a loop over a
fixed ``nn.ModuleList``: no data-dependent Python, so ``torch.fx`` traces it), and trains a BP copy
and a PC copy side by side with :func:`pccompile.testing.train_against_bp` (2 steps x 2
accumulated micro-batches, clipping, momentum, weight decay), for a drawn rule (zil, fpa), schedule
(efficient, faithful), training mode, loss and batch size (1 to 4). Every ``.grad``, parameter and
buffer must stay within relative 1e-12 of BP's, the RNG streams must agree, no two parameters may
share a ``.grad`` and ``convert`` must change nothing.

Patterns (``PATTERNS``): Linear + tanh/relu/gelu/sigmoid chains; residual skips over 1-3 layers
(levelling); parameters added at the activation's full shape (``h + a + b``, shape ``(1, w)`` or
``(batch, w)``); parameter transforms (``w0 + dw`` through ``F.linear``, with ``w0`` a parameter or
a buffer; low-rank ``b @ a``; transposed tying ``h @ w.t()`` plus a second use of ``w``); weights
reached only through a leaf that reads no activation (``q(query)``, ``q(buffer)``,
``emb(torch.arange(1))``); a user leaf module (``leaf_modules=[AddLeaf]``) reused on two
branches; buffers mutated in forward in train mode (EMA ``mu.lerp_`` under ``no_grad`` and a
counter ``n += 1``); ``weight_norm`` and ``spectral_norm`` parametrizations; ``nn.Dropout``.
In-place writes through views (``h[:, :1].mul_(...)`` and friends) must be refused with
``pccompile.TraceError`` at ``convert``; programs containing one are tested separately.

Examples per run (``derandomize=True``, no example database, so CI sees the same programs):
``test_pattern_matches_bp``: 20 per pattern x 12 patterns = 240, each program containing that
pattern plus 0-2 others; ``test_mixed_program_matches_bp``: 80 programs of 1-4 blocks from all
patterns; ``test_view_write_is_refused``: 40. In all 360 examples, about 30 s on one CPU thread.
Every example is one convert plus 4 BP and 4 PC micro-batches of a model 3-6 wide, batch 1-4.
``PCCOMPILE_HYPOTHESIS_SCALE=k`` multiplies every count by ``k``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import pccompile
from pccompile.testing import Habits, train_against_bp

# Faithful Z-IL may let value nodes behind the error front overflow; the library warns (and
# pyproject turns warnings into errors) though the updates stay exact, which check() verifies.
pytestmark = pytest.mark.filterwarnings("ignore:The energy became non-finite:RuntimeWarning")
TOL = 1e-12
SCALE = int(os.environ.get("PCCOMPILE_HYPOTHESIS_SCALE", "1"))
PER_PATTERN = 20 * SCALE
MIXED = 80 * SCALE
REFUSED = 40 * SCALE

ACTS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu, "sigmoid": torch.sigmoid}
PATTERNS = (
    "dense",  # Linear + nonlinearity
    "residual",  # h + f(h), f = 1-3 Linear + nonlinearity layers (skip edges: levelling)
    "fullshape",  # act(h + a + b), a and b at shape (1, w) or (batch, w)
    "delta",  # F.linear(h, w0 + dw, bias); w0 a parameter or a buffer
    "lowrank",  # F.linear(h, b @ a, bias), rank 1-2
    "tied",  # h @ w.t() plus another use of w
    "query",  # a leaf reading no activation: h * q(param), h * q(buffer), h + emb(const)
    "leaf",  # a user leaf module reused on two branches
    "ema",  # buffers mutated in forward (train mode): mu.lerp_(h.mean(0), 0.1), n += 1
    "wnorm",  # weight_norm(Linear)
    "snorm",  # spectral_norm(Linear): power iteration updates buffers in train mode
    "dropout",  # nn.Dropout in train mode
)
VIEW_WRITES = (
    "h[:, :1].mul_(1.5)",
    "h[0].add_(0.25)",
    "h.narrow(1, 1, 2).div_(2.0)",
    "h.select(1, 0).clamp_(-0.5, 0.5)",
    "h.t()[1].neg_()",
    "h.unsqueeze(0)[0, :, 0].sub_(0.5)",
    "v = h[:, 1:]; v += F.relu(h[:, :1] - 1)",  # FX records an out-of-place add here
)
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Block:
    """One block: ``kind`` from PATTERNS (or "viewwrite"), its output width, its nonlinearity and
    one kind-specific integer ``arg`` (residual depth, full-shape rows, rank, variant ...)."""

    kind: str
    out: int
    act: str = "tanh"
    arg: int = 0

    def __repr__(self) -> str:
        return f"{self.kind}(out={self.out}, {self.act}, arg={self.arg})"


@dataclass(frozen=True)
class Program:
    width: int  # input width
    stem: int  # stem Linear's output width
    blocks: tuple[Block, ...]
    n_out: int
    batch: int
    train: bool
    loss: str  # "ce" or "mse"
    set_to_none: bool
    clip: bool
    seed: int

    def __repr__(self) -> str:
        blocks = ", ".join(map(repr, self.blocks))
        return (
            f"Program(in={self.width}, stem={self.stem}, [{blocks}], out={self.n_out}, "
            f"batch={self.batch}, train={self.train}, loss={self.loss}, "
            f"set_to_none={self.set_to_none}, clip={self.clip}, seed={self.seed})"
        )


WIDTHS = st.integers(3, 6)


@st.composite
def blocks_of(draw, kind: str, w: int, batch: int) -> Block:
    """A block of ``kind`` reading width ``w``."""
    act = draw(st.sampled_from(sorted(ACTS)))
    if kind in ("dense", "delta", "wnorm", "snorm"):
        return Block(kind, draw(WIDTHS), act, draw(st.integers(0, 1)))
    if kind == "lowrank":
        return Block(kind, draw(WIDTHS), act, draw(st.integers(1, 2)))
    if kind == "residual":
        return Block(kind, w, act, draw(st.integers(1, 3)))
    if kind == "fullshape":  # arg: rows of a and b (1, or the batch: full shape either way at 1)
        return Block(kind, w, act, draw(st.sampled_from(sorted({1, batch}))))
    if kind == "tied":  # arg 0: act(h @ w + h @ w.t()); arg 1: act(act(h @ w.t()) @ w)
        return Block(kind, w, act, draw(st.integers(0, 1)))
    if kind == "leaf":  # act(L(l1 h)) {*, +} {L, act(L)}(l2 h): arg bit 0 "+", bit 1 act(L)
        return Block(kind, w, act, draw(st.integers(0, 3)))
    if kind == "ema":  # arg 1: also count calls in a long buffer
        return Block(kind, w, act, draw(st.integers(0, 1)))
    if kind == "dropout":  # arg: p in tenths
        return Block(kind, w, act, draw(st.integers(1, 5)))
    if kind == "viewwrite":
        return Block(kind, w, act, draw(st.integers(0, len(VIEW_WRITES) - 1)))
    if kind == "query":  # arg 0: h * q(query); 1: h * q(table), a buffer; 2: h + emb(arange(1))
        return Block(kind, w, act, draw(st.integers(0, 2)))
    raise ValueError(kind)


@st.composite
def programs(draw, must: str | None = None, allowed=PATTERNS, max_blocks: int = 3) -> Program:
    """A program whose blocks come from ``allowed``, always containing ``must`` if given."""
    batch = draw(st.integers(1, 4))
    kinds = draw(st.lists(st.sampled_from(allowed), min_size=0 if must else 1, max_size=max_blocks))
    if must is not None:
        kinds.insert(draw(st.integers(0, len(kinds))), must)
    width, stem = draw(WIDTHS), draw(WIDTHS)
    blocks, w = [], stem
    for kind in kinds:
        block = draw(blocks_of(kind, w, batch))
        blocks.append(block)
        w = block.out
    return Program(
        width=width,
        stem=stem,
        blocks=tuple(blocks),
        n_out=draw(st.integers(2, 4)),
        batch=batch,
        train=draw(st.booleans()),
        loss=draw(st.sampled_from(["ce", "mse"])),
        set_to_none=draw(st.booleans()),
        clip=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


# ----------------------------------------------------------------------------- the model
class AddLeaf(nn.Module):
    """The user leaf (``leaf_modules=[AddLeaf]``): parameters added at the full shape."""

    def __init__(self, w: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(1, w) / 2)
        self.b = nn.Parameter(torch.randn(1, w) / 2)

    def forward(self, x):
        return x + self.a + self.b


class EMA(nn.Module):
    """Buffers updated inside traced-through code, in train mode only."""

    def __init__(self, w: int, count: bool):
        super().__init__()
        self.count = count
        self.register_buffer("mu", torch.zeros(w))
        self.register_buffer("n", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mu.lerp_(x.mean(0), 0.1)
                if self.count:
                    self.n += 1
        return x - self.mu


class BlockModule(nn.Module):
    """One block of a :class:`Program`, reading width ``w``."""

    def __init__(self, block: Block, w: int):
        super().__init__()
        self.block = block
        kind, out, arg = block.kind, block.out, block.arg
        P = torch.nn.utils.parametrizations
        if kind == "dense":
            self.lin = nn.Linear(w, out)
        elif kind == "residual":
            self.layers = nn.ModuleList(nn.Linear(w, w) for _ in range(arg))
        elif kind == "fullshape":
            self.a = nn.Parameter(torch.randn(arg, w) / 2)
            self.b = nn.Parameter(torch.randn(arg, w) / 2)
        elif kind == "delta":
            base = torch.randn(out, w) / w**0.5
            if arg == 0:
                self.w0 = nn.Parameter(base)
            else:
                self.register_buffer("w0", base)
            self.dw = nn.Parameter(torch.randn(out, w) / 10)
            self.bias = nn.Parameter(torch.randn(out) / 10)
        elif kind == "lowrank":
            self.b = nn.Parameter(torch.randn(out, arg) / 2)
            self.a = nn.Parameter(torch.randn(arg, w) / 2)
            self.bias = nn.Parameter(torch.randn(out) / 10)
        elif kind == "tied":
            self.w = nn.Parameter(torch.randn(w, w) / w**0.5)
        elif kind == "query":
            self.query = nn.Parameter(torch.randn(1, w))
            self.register_buffer("table", torch.randn(1, w))
            self.q = nn.Linear(w, w)
            self.emb = nn.Embedding(2, w)
        elif kind == "leaf":
            self.l1, self.l2 = nn.Linear(w, w), nn.Linear(w, w)
            self.leaf = AddLeaf(w)
        elif kind == "ema":
            self.ema = EMA(w, bool(arg))
        elif kind == "wnorm":
            self.lin = P.weight_norm(nn.Linear(w, out))
        elif kind == "snorm":
            self.lin = P.spectral_norm(nn.Linear(w, out))
        elif kind == "dropout":
            self.drop = nn.Dropout(arg / 10)
        elif kind != "viewwrite":
            raise ValueError(kind)

    def forward(self, h):
        kind, arg = self.block.kind, self.block.arg
        act = ACTS[self.block.act]
        if kind in ("dense", "wnorm", "snorm"):
            return act(self.lin(h))
        if kind == "residual":
            z = h
            for lin in self.layers:
                z = act(lin(z))
            return h + z
        if kind == "fullshape":
            return act(h + self.a + self.b)
        if kind == "delta":
            return act(F.linear(h, self.w0 + self.dw, self.bias))
        if kind == "lowrank":
            return act(F.linear(h, self.b @ self.a, self.bias))
        if kind == "tied":
            if arg == 0:
                return act(h @ self.w + h @ self.w.t())
            return act(act(h @ self.w.t()) @ self.w)
        if kind == "query":
            if arg == 2:
                return h + self.emb(torch.arange(1))
            return h * self.q(self.query if arg == 0 else self.table)
        if kind == "leaf":
            left, right = act(self.leaf(self.l1(h))), self.leaf(self.l2(h))
            right = act(right) if arg & 2 else right
            return left + right if arg & 1 else left * right
        if kind == "ema":
            return act(self.ema(h))
        if kind == "dropout":
            return self.drop(h)
        # viewwrite: write through a view of h in place, then keep using h
        if arg == 0:
            h[:, :1].mul_(1.5)
        elif arg == 1:
            h[0].add_(0.25)
        elif arg == 2:
            h.narrow(1, 1, 2).div_(2.0)
        elif arg == 3:
            h.select(1, 0).clamp_(-0.5, 0.5)
        elif arg == 4:
            h.t()[1].neg_()
        elif arg == 5:
            h.unsqueeze(0)[0, :, 0].sub_(0.5)
        else:
            v = h[:, 1:]
            v += F.relu(h[:, :1] - 1)
        return h


class ProgramNet(nn.Module):
    def __init__(self, prog: Program):
        super().__init__()
        self.stem = nn.Linear(prog.width, prog.stem)
        blocks, w = [], prog.stem
        for block in prog.blocks:
            blocks.append(BlockModule(block, w))
            w = block.out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(w, prog.n_out)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def build(prog: Program) -> tuple[nn.Module, list]:
    """The float64 model and four micro-batches ``((x,), y)``."""
    torch.manual_seed(prog.seed)
    model = ProgramNet(prog).double().train(prog.train)
    g = torch.Generator().manual_seed(prog.seed + 1)
    batches = []
    for _ in range(4):
        x = torch.randn(prog.batch, prog.width, generator=g, dtype=torch.float64)
        if prog.loss == "ce":
            y = torch.randint(0, prog.n_out, (prog.batch,), generator=g)
        else:
            y = torch.randn(prog.batch, prog.n_out, generator=g, dtype=torch.float64)
        batches.append(((x,), y))
    return model, batches


def check(prog: Program, rule: str, mode: str) -> None:
    model, batches = build(prog)
    habits = Habits(
        steps=2, accumulate=2, set_to_none=prog.set_to_none, clip=1.0 if prog.clip else None
    )
    rep = train_against_bp(
        model,
        batches,
        F.cross_entropy if prog.loss == "ce" else F.mse_loss,
        rule,
        mode=mode,
        habits=habits,
        train=prog.train,
        seed=prog.seed,
        convert_options={"leaf_modules": [AddLeaf]},
    )
    assert rep.ok(TOL), f"{rule}/{mode} {prog!r}:\n" + "\n".join(rep.problems(TOL))


RULES = st.sampled_from(["zil", "fpa"])
MODES = st.sampled_from(["efficient", "faithful"])


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_matches_bp(pattern):
    """Programs containing ``pattern`` (plus up to two others) train exactly as BP does."""

    @seed(PATTERNS.index(pattern))  # one fixed stream per pattern (derandomize alone: one for all)
    @settings(max_examples=PER_PATTERN, **SETTINGS)
    @given(prog=programs(must=pattern, max_blocks=2), rule=RULES, mode=MODES)
    def run(prog, rule, mode):
        check(prog, rule, mode)

    run()


@settings(max_examples=MIXED, **SETTINGS)
@given(prog=programs(max_blocks=4), rule=RULES, mode=MODES)
def test_mixed_program_matches_bp(prog, rule, mode):
    """Programs of 1-4 blocks drawn from every pattern train exactly as BP does."""
    check(prog, rule, mode)


@settings(max_examples=REFUSED, **SETTINGS)
@given(prog=programs(must="viewwrite", max_blocks=2), rule=RULES)
def test_view_write_is_refused(prog, rule):
    """A program that writes through a view in place is refused at convert (TraceError).

    The eager comparison at convert catches such a write only when it changes the example's
    output; the last form (``v += F.relu(h[:, :1] - 1)``, which FX records as an out-of-place
    ``add``) leaves it unchanged whenever the example's ``h[:, 0] < 1``, so only refusing the write
    itself passes every example.
    """
    model, batches = build(prog)
    with pytest.raises(pccompile.TraceError):
        pccompile.convert(model, batches[0][0], rule, leaf_modules=[AddLeaf])
