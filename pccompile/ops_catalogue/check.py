"""The check every catalogue case gets: the converted single-op model's forward equals the
plain call, and one ``zil`` learn step equals ``bp`` in float64 in both schedules (every
gradient within ``TOL`` relative L1, the same buffers and the same global RNG state after)."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..api import convert
from ..module import PCModule
from .base import OneOp, Tensor, inputs_for, one_op_class, weighted_sum
from .entries import Entry

TOL = 1e-12  # float64, relative L1 per parameter (tests/helpers.py's F64_TOL)

# Recurrent layers are unrolled at conversion: one cell vertex per time step (see unroll.py).
UNROLLED = {nn.LSTM: torch.lstm_cell, nn.GRU: torch.gru_cell, nn.RNN: torch.rnn_tanh_cell}


def _require(ok: bool, message: str) -> None:
    """``assert`` that survives ``python -O``: the check is the point of this module."""
    if not ok:
        raise AssertionError(message)


def _graph_has(pcm: PCModule, e: Entry) -> bool:
    for n in pcm.plan.gm.graph.nodes:
        if e.table == "module" and n.op == "call_function" and n.target is UNROLLED.get(e.key):
            return True
        if e.table == "function" and n.op == "call_function" and n.target is e.key:
            return True
        if e.table == "method" and n.op == "call_method" and n.target == e.key:
            return True
        if (
            e.table == "module"
            and n.op == "call_module"
            and type(pcm.plan.gm.get_submodule(n.target)) is e.key
        ):
            return True
    return False


def build(e: Entry) -> tuple[OneOp, tuple[Tensor, ...]]:
    """The entry's single-op model and its inputs."""
    _require(e.case is not None, f"{e.name} has no case: {e.reason}")
    return one_op_class(len(e.case.args))(e.case, e.learn), inputs_for(e.case)


def _grads(pcm: PCModule, xs: tuple, rule: str, **opts) -> dict[str, Tensor]:
    for p in pcm.parameters():
        p.grad = None
    torch.manual_seed(0)
    pcm.learn(*xs, target=None, loss_fn=weighted_sum, rule=rule, **opts)
    return {n: p.grad.detach().clone() for n, p in pcm.named_parameters() if p.grad is not None}


def _rel_err(a: Tensor, b: Tensor, floor: float) -> float:
    num = (a.double() - b.double()).abs().sum().item()
    den = max(b.double().abs().sum().item(), floor)
    return num / den if den > 0 else num


def assert_zil_matches_bp(pcm: PCModule, xs: tuple, **opts) -> None:
    """One ``zil`` step from the state one ``bp`` step started from gives bp's gradients (within
    ``TOL``), buffers and global RNG state. The same comparison as tests/helpers.py's
    ``assert_matches_bp`` (kept here so tools/gen_ops_table.py needs nothing from tests/)."""
    start = copy.deepcopy(pcm.state_dict())
    bp = _grads(pcm, xs, "bp")
    bp_state, bp_rng = copy.deepcopy(pcm.state_dict()), torch.get_rng_state()
    pcm.load_state_dict(start)
    pc = _grads(pcm, xs, "zil", **opts)
    for k, v in pcm.state_dict().items():
        _require(torch.equal(v, bp_state[k]), f"buffer {k} differs from the bp run after learn")
    _require(torch.equal(torch.get_rng_state(), bp_rng), "the global RNG state differs from bp's")
    _require(
        set(pc) == set(bp),
        f"grad sets differ: pc-only {set(pc) - set(bp)}, bp-only {set(bp) - set(pc)}",
    )
    scale = max((g.abs().mean().item() for g in bp.values()), default=0.0)
    errors = {n: _rel_err(pc[n], bp[n], floor=1e-3 * scale * bp[n].numel()) for n in bp}
    bad = {n: err for n, err in errors.items() if not err <= TOL}
    _require(not bad, f"zil differs from bp beyond {TOL:g}: {dict(list(bad.items())[:5])}")


def _assert_same_forward(e: Entry, pcm: PCModule, model: OneOp, xs: tuple) -> None:
    torch.manual_seed(0)
    out = pcm(*xs)
    torch.manual_seed(0)
    ref = model(*xs)
    _require(type(out) is type(ref), f"output type {type(out)} is not {type(ref)}")
    flat_o, flat_r = tree_flatten(out)[0], tree_flatten(ref)[0]
    _require(len(flat_o) == len(flat_r), f"{len(flat_o)} outputs, expected {len(flat_r)}")
    # Unrolled RNNs compute cell by cell where torch's fused kernel does not: equal to rounding.
    tol = 1e-12 if e.key in UNROLLED else 0.0
    for a, b in zip(flat_o, flat_r, strict=True):
        if isinstance(b, Tensor):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)
        else:
            _require(a == b, f"output {a!r} differs from the plain call's {b!r}")


def check_case(e: Entry) -> None:
    """Forward equals the plain call, and one zil step equals bp (float64); raises
    ``AssertionError`` if not."""
    model, xs = build(e)
    pcm = convert(model, xs)
    _require(_graph_has(pcm, e), f"{e.name} is not a node of the converted graph:\n{pcm.code}")
    _assert_same_forward(e, pcm, model, xs)
    # Both schedules: the faithful one re-evaluates the op at every inference step, which is
    # where a mis-declared kind (a random or stateful op called pure) shows.
    assert_zil_matches_bp(pcm, xs, mode="efficient")
    with warnings.catch_warnings():
        # Behind the error front, moved value nodes may leave an op's domain (log, sqrt, acos):
        # the energy becomes NaN there and a RuntimeWarning says so; every parameter was read
        # before, and the comparison below still asserts BP's gradients.
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_zil_matches_bp(pcm, xs, mode="faithful")
