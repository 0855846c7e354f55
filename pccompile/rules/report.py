"""What a learn step reports: the :class:`LearnReport` and, when asked, the per-step
:class:`Trace` of the inference dynamics (energies and error norms per vertex)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["LearnReport", "Trace"]


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
