"""``verify``: is PC exactly BP on *my* model? One learn step with a rule and one with ``bp`` from
the same state, compared per parameter.

Reads: a PCModule, a batch and a loss. Writes nothing that survives: parameters' ``.grad``,
buffers and the global RNG state are restored afterwards.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UnreachedWarning
from .module import PCModule

__all__ = ["ParamCheck", "VerifyResult", "verify", "format_table", "default_tolerance"]


@dataclass
class ParamCheck:
    name: str
    shape: tuple[int, ...]
    max_abs: float  # max |g_rule - g_bp|
    rel: float  # sum |g_rule - g_bp| / sum |g_bp|  (denominator floored for noise-level grads)
    ok: bool


@dataclass
class VerifyResult:
    rule: str
    mode: str
    tol: float
    loss: float
    rows: list[ParamCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def worst(self) -> ParamCheck | None:
        return max(self.rows, key=lambda r: r.rel, default=None)

    def table(self) -> str:
        rows = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "scalar",
                f"{r.max_abs:.2e}",
                f"{r.rel:.2e}",
                "ok" if r.ok else "FAIL",
            )
            for r in self.rows
        ]
        return format_table(
            ["parameter", "shape", "max |diff|", "rel diff", f"<= {self.tol:g}"], rows
        )


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative L1 tolerance: 1e-10 in float64, 1e-4 otherwise."""
    return 1e-10 if dtype == torch.float64 else 1e-4


def _grads(pcm: PCModule) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in pcm.named_parameters() if p.grad is not None}


def verify(
    pcm: PCModule,
    inputs: Sequence[Any],
    target: Any,
    loss_fn: Callable,
    rule: Any = None,
    *,
    tol: float | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> VerifyResult:
    """Compare one learn step of ``rule`` against ``bp`` on the same state and batch.

    ``progress(text)``, if given, is called before each of the two steps (``"bp step"``,
    ``"zil step"``), e.g. to move a progress bar.

    Returns:
        A :class:`VerifyResult` with one :class:`ParamCheck` per parameter; ``.passed`` is True
        when every relative difference is within ``tol``.

    Example:
        >>> res = verify(pcm, (x,), y, torch.nn.functional.cross_entropy, "zil")
        >>> print(res.table()); assert res.passed
    """
    params = dict(pcm.named_parameters())
    saved_grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in params.items()}
    state = copy.deepcopy(pcm.state_dict())
    rng = torch.get_rng_state()
    try:
        runs = {}
        for r in ("bp", rule):
            pcm.load_state_dict(state)
            for p in params.values():
                p.grad = None
            torch.manual_seed(seed)
            kw = options if r is rule else {}
            if progress is not None:
                name = r if isinstance(r, str) else getattr(r or pcm.rule, "name", "rule")
                progress(f"{name} step")
            with warnings.catch_warnings():  # the table names the parameters not reached
                warnings.simplefilter("ignore", UnreachedWarning)
                report = pcm.learn(*inputs, target=target, loss_fn=loss_fn, rule=r, **kw)
            runs["bp" if r == "bp" else "pc"] = (_grads(pcm), report)
    finally:
        pcm.load_state_dict(state)
        for n, p in params.items():
            p.grad = saved_grads[n]
        torch.set_rng_state(rng)
    (bp, _), (pc, report) = runs["bp"], runs["pc"]
    dtype = next(iter(params.values())).dtype if params else torch.float32
    tol = default_tolerance(dtype) if tol is None else tol
    scale = max((g.abs().mean().item() for g in bp.values()), default=0.0)
    out = VerifyResult(report.rule, report.mode, tol, report.loss)
    for name in params:
        if name not in bp and name not in pc:
            continue
        b = bp.get(name, torch.zeros_like(params[name]))
        a = pc.get(name, torch.zeros_like(params[name]))
        diff = (a.double() - b.double()).abs()
        den = max(b.double().abs().sum().item(), 1e-3 * scale * b.numel())
        rel = diff.sum().item() / den if den > 0 else diff.sum().item()
        ok = rel <= tol and (name in bp) == (name in pc)
        out.rows.append(ParamCheck(name, tuple(b.shape), diff.max().item(), rel, ok))
    return out


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
