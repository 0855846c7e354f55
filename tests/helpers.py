"""The one helper every exactness test uses: PC grads vs autograd grads on the same model,
same initial state, same batch, same random stream."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

import pccompile

# What the code achieves: float64 within 1e-12 relative; float32 bitwise (every vertex's VJP is
# the op's own backward, summed in autograd's order). Unrolled RNNs pass their own tolerance.
F64_TOL = 1e-12
F32_TOL = 0.0


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """Relative L1 divergence sum|a - b| / sum|b| (DESIGN.md's measure); ``floor`` bounds the
    denominator from below for tensors whose BP gradient is itself rounding noise."""
    num = (a.double() - b.double()).abs().sum().item()
    den = max(b.double().abs().sum().item(), floor)
    return num / den if den > 0 else num


@dataclass
class Comparison:
    errors: dict[str, float]
    pc: dict[str, torch.Tensor]
    bp: dict[str, torch.Tensor]
    report: pccompile.LearnReport

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.errors, key=self.errors.get)
        return name, self.errors[name]


def grads_after(pcm: pccompile.PCModule, inputs: tuple, target, loss_fn, rule, seed: int, **opts):
    for p in pcm.parameters():
        p.grad = None
    torch.manual_seed(seed)
    report = pcm.learn(*inputs, target=target, loss_fn=loss_fn, rule=rule, **opts)
    grads = {n: p.grad.detach().clone() for n, p in pcm.named_parameters() if p.grad is not None}
    return grads, report


def compare_to_bp(pcm, inputs, target, loss_fn, rule="zil", seed: int = 0, **opts) -> Comparison:
    """Run ``bp`` and ``rule`` from the same state (buffers restored in between) and compare.

    Also asserts that both runs leave the same buffers (BatchNorm statistics) and the same
    global RNG state, so a user can switch rules mid-training.
    """
    start = copy.deepcopy(pcm.state_dict())
    bp, _ = grads_after(pcm, inputs, target, loss_fn, "bp", seed)
    bp_state = copy.deepcopy(pcm.state_dict())
    bp_rng = torch.get_rng_state()
    pcm.load_state_dict(start)
    pc, report = grads_after(pcm, inputs, target, loss_fn, rule, seed, **opts)
    for k, v in pcm.state_dict().items():
        assert torch.equal(v, bp_state[k]), f"buffer {k} differs from the bp run after learn"
    assert torch.equal(torch.get_rng_state(), bp_rng), "the global RNG state differs from bp's"
    assert set(pc) == set(bp), (
        f"grad sets differ: pc-only {set(pc) - set(bp)}, bp-only {set(bp) - set(pc)}"
    )
    scale = max((g.abs().mean().item() for g in bp.values()), default=0.0)
    errors = {n: rel_err(pc[n], bp[n], floor=1e-3 * scale * bp[n].numel()) for n in bp}
    return Comparison(errors, pc, bp, report)


def assert_matches_bp(pcm, inputs, target, loss_fn, rule="zil", tol: float | None = None, **opts):
    """Assert every parameter's PC gradient equals autograd's within ``tol`` (relative L1)."""
    dtype = next(pcm.parameters()).dtype
    tol = tol if tol is not None else (F64_TOL if dtype == torch.float64 else F32_TOL)
    cmp = compare_to_bp(pcm, inputs, target, loss_fn, rule, **opts)
    bad = {n: e for n, e in cmp.errors.items() if not e <= tol}
    assert not bad, f"{rule} differs from bp beyond {tol:g}: {dict(list(bad.items())[:5])}"
    return cmp
