"""What a learn step reports: the :class:`LearnReport` and, when asked, the per-step
:class:`Trace` of the inference dynamics (energies and error norms per vertex)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LearnReport", "Trace", "first_rise", "silent_message", "divergence_message"]


@dataclass
class Trace:
    """Per-step record of the inference dynamics, ready to plot.

    ``energy[s]`` is the total energy at step ``s``; ``vertex_energy[name][s]`` is
    ``1/2 ||eps_v||^2`` (the output's entry is its loss term); ``error_norm[name][s]`` is
    ``||eps_v||``; ``levels[name]`` is the vertex's level. With ``keep_errors=True``,
    ``errors[name][s]`` holds the error-node tensors themselves (a list per vertex).
    """

    energy: list[float] = field(default_factory=list)
    vertex_energy: dict[str, list[float]] = field(default_factory=dict)
    error_norm: dict[str, list[float]] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
    errors: dict[str, list[list]] = field(default_factory=dict)
    keep_errors: bool = False
    per_vertex: bool = True  # False: only the total energy per step (what LearnReport.energy shows)
    rule: str = ""  # the rule that ran (captions explain the dynamics by it)

    @property
    def steps(self) -> int:
        return len(self.energy)

    def level_error_norms(self) -> dict[int, list[float]]:
        """Error norm summed (in quadrature) over the vertices of each level, per step."""
        out: dict[int, list[float]] = {}
        for name, norms in self.error_norm.items():
            if name == "output":
                continue
            acc = out.setdefault(self.levels[name], [0.0] * len(norms))
            for s, n in enumerate(norms):
                acc[s] = math.hypot(acc[s], n)
        return dict(sorted(out.items()))

    def record(self, names_levels: list[tuple[str, int]], eps: list, loss_term: float) -> None:
        total = loss_term
        for (name, level), e in zip(names_levels, eps):
            # vector_norm reduces in place (no float64 copy of every error node per step); the
            # norm as hypot and its square as n * n: n ** 2 raises OverflowError past 1.3e154
            # (float64 errors behind the front), n * n gives inf
            norm = math.hypot(*_norms(e))
            sq = norm * norm
            total += 0.5 * sq
            if not self.per_vertex:
                continue
            self.vertex_energy.setdefault(name, []).append(0.5 * sq)
            self.error_norm.setdefault(name, []).append(norm)
            self.levels[name] = level
            if self.keep_errors:
                self.errors.setdefault(name, []).append([t.detach().clone() for t in e])
        if self.per_vertex:
            self.vertex_energy.setdefault("output", []).append(loss_term)
            self.error_norm.setdefault("output", []).append(float("nan"))
            self.levels["output"] = 0
        self.energy.append(total)


def _norms(e: list | None) -> list[float]:
    return [float(torch.linalg.vector_norm(t)) for t in e or () if t is not None]


@dataclass
class LearnReport:
    """What :meth:`PCModule.learn` returns.

    Attributes:
        rule: the rule's name; mode: ``efficient`` / ``faithful`` / ``autograd``.
        loss: the loss at the feed-forward pass (what BP's loss would be).
        steps: inference steps run (0 for bp).
        energy: total energy per step, where the schedule tracks it (faithful modes).
        trace: the full per-vertex :class:`Trace` when ``trace=True`` was asked.
        output: the model's output on the batch (detached).
        unreached: vertices with parameters the error never reached in ``steps`` (their
            gradient is zero; ``learn`` also warns).
        compile_seconds: time ``torch.compile`` took in this step (``compile=True``: the first
            step of each input shape; 0 otherwise).
        recaptures: captures the PCModule has made so far because the model changed after
            ``convert`` (a guard failed, :mod:`pccompile.guards`).
        silent: vertices with parameters the error reaches by the graph whose error is still
            exactly zero at the end of inference (numerically unreached; ``learn`` warns with
            :class:`~pccompile.NumericallyUnreachedWarning`).
        diverged_at: the first inference step at which the energy rose under plain gradient
            steps (``learn`` warns with :class:`~pccompile.DivergenceWarning`); None if it
            never did.
        warnings: the messages of the warnings ``learn`` issued for this step.
    """

    rule: str
    mode: str
    loss: float
    steps: int
    energy: list[float] | None = None
    trace: Trace | None = None
    output: Any = None
    unreached: list[str] = field(default_factory=list)
    compile_seconds: float = 0.0
    recaptures: int = 0
    silent: list[str] = field(default_factory=list)
    diverged_at: int | None = None
    warnings: list[str] = field(default_factory=list)


# The rules whose inference is plain gradient descent on the energy (a rise means divergence).
DESCENT_RULES = ("il", "ipc", "epc")


def first_rise(energy: list[float], rtol: float = 1e-3) -> int | None:
    """The first step whose energy exceeds the lowest energy before it by more than ``rtol``
    (relative), provided the run ends above its lowest energy by as much (a rise that recovers,
    or one within rounding, is not divergence); None otherwise. ``rtol``: ``1e-3`` suits
    float32 energies (the loss term's rounding scales with the logits, not with the loss),
    ``1e-9`` float64."""
    finite = [e for e in energy if math.isfinite(e)]
    if len(finite) < 2:
        return None
    lo, first = math.inf, None
    for s, e in enumerate(energy):
        if not math.isfinite(e):
            continue
        if first is None and s > 0 and e - lo > rtol * abs(lo):
            first = s
        lo = min(lo, e)
    if first is None or finite[-1] - lo <= rtol * abs(lo):
        return None
    return first


def silent_message(rule: str, names: list[str], dtype: Any, params: list[str] = ()) -> str:
    """The numerically-unreached warning: which vertices (and parameters), why, what to do."""
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    if params:
        shown += "; parameters " + ", ".join(params[:8]) + (", ..." if len(params) > 8 else "")
    f64 = "" if dtype == torch.float64 else " run in float64 (model.double()),"
    return (
        f"{rule}: the error reaches {len(names)} parametric vertices by the graph but is still "
        f"exactly zero there after inference ({shown}): the signal that arrives is below "
        f"{dtype}'s resolution (x + delta == x), so their parameters get a zero gradient. "
        f"Remedies:{f64} rule='epc' (the error reaches every vertex in one reverse pass), or "
        f"convert(..., parametrization='mupc') (depth-scaled edges)."
    )


def divergence_message(rule: str, step: int, energy: list[float], gamma: float) -> str:
    return (
        f"{rule}: inference diverges: the energy rose from {energy[step - 1]:.4g} to "
        f"{energy[step]:.4g} at step {step} (of {len(energy) - 1}) under plain gradient steps "
        f"of gamma={gamma}. A descent step lowers a smooth energy when it is small enough: "
        f"use a smaller gamma (e.g. {gamma / 2:g})."
    )
