"""Z-IL: zero-divergence inference learning (Song, Lukasiewicz, Xu, Bogacz 2020).

Value nodes start at the feed-forward pass, gamma = 1, and the parameter use of a vertex at level
``l`` is read once, at inference step ``t = l``; contributions are summed and applied after
inference. On a leveled graph this is exactly BP.

Two schedules, identical parameter updates (tested, bitwise):

* ``efficient``: the event-driven schedule of :mod:`pccompile.rules.propagate`.
* ``faithful``: the synchronous loop of :mod:`pccompile.rules.sync`, every value node every step,
  predictions re-evaluated from the current value nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Plan
from ..errors import ConfigError
from .base import Mode, Rule, Schedule, check_gamma, check_mode, check_steps
from .propagate import propagate
from .sync import run_sync

__all__ = ["ZIL", "ZILRule"]


@dataclass(frozen=True)
class ZIL:
    """Zero-divergence inference learning (Song et al. 2020): exactly BP on a leveled graph.

    Args:
        gamma: inference step size. Only ``1.0`` is exact; other values scale the update of a
            vertex at level ``l`` by ``gamma**l`` (useful to see the machinery at work).
        steps: inference steps ``t = 0 .. steps-1``; the weights of a vertex at level ``l`` are
            read at step ``t = l``. ``None`` means ``depth + 1`` (every level gets its update).
        mode: ``"efficient"`` runs the event-driven schedule (only the level-``t`` frontier at
            step ``t``, one local VJP per vertex); ``"faithful"`` updates every value node at
            every step as the papers write it (same parameter updates, per-step energies);
            ``"auto"`` picks efficient whenever it is provably identical.
    """

    gamma: float = 1.0
    steps: int | None = None
    mode: Mode = "auto"
    name: str = "zil"

    def __post_init__(self) -> None:
        check_gamma(self.gamma, "ZIL")
        check_steps(self.steps, "ZIL")
        check_mode(self.mode, "ZIL")


class ZILRule(Rule):
    name = "zil"
    config = ZIL

    def steps(self, plan: Plan, cfg: ZIL) -> int:
        return plan.depth + 1 if cfg.steps is None else cfg.steps

    def schedule(self, plan: Plan, cfg: ZIL, trace: bool) -> Schedule:
        if cfg.mode == "efficient" and not plan.leveled:
            raise ConfigError(
                "ZIL(mode='efficient') needs a leveled graph (its schedule is only BP-equal when "
                "every edge spans one level); convert with level=True, or use mode='faithful' to "
                "simulate Z-IL on the unleveled graph."
            )
        mode = cfg.mode
        if mode == "auto":
            mode = "efficient" if plan.leveled and not trace else "faithful"
        return Schedule(mode, self.steps(plan, cfg), records_state=mode == "faithful")

    def exactness_problems(self, plan: Plan, cfg: ZIL) -> list[str]:
        problems = []
        if cfg.gamma != 1.0:
            problems.append(f"gamma={cfg.gamma} (must be 1)")
        if cfg.steps is not None and cfg.steps < plan.depth + 1:
            problems.append(f"steps={cfg.steps} < depth+1={plan.depth + 1}")
        if not plan.leveled:
            problems.append("the graph is not leveled (convert with level=True)")
        return problems

    def run(self, plan, ff, cfg: ZIL, schedule: Schedule, target, loss_fn, trace):
        if schedule.mode == "efficient":
            return propagate(plan, ff, gamma=cfg.gamma, last_level=schedule.steps - 1)
        by_level = plan.by_level
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=max(schedule.steps - 1, 0),
            gamma=cfg.gamma,
            weights_at=lambda s: set(by_level[s]) if s < len(by_level) else None,
            recompute=True,
            trace=trace,
        )
