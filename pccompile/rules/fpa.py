"""FPA: the fixed-prediction assumption (Millidge et al.; Rosenbaum's Torch2PC 'FixedPred').

Predictions ``mu_v`` and Jacobians are frozen at the feed-forward pass; the output error is
``-dL/dmu_out`` at that pass. With gamma = 1 the synchronous updates
``x_v += -eps_v + sum_c J_{c,v}^T eps_c`` make ``eps_v`` after ``s`` steps the sum over paths of
length <= ``s`` from ``v`` to the output, so after ``steps >= depth`` every error node holds BP's
gradient, on any DAG, leveled or not; parameters are read from that final state.

``efficient`` computes that fixed point directly (:mod:`pccompile.rules.propagate`, levels in
increasing order, one VJP each); ``faithful`` runs the synchronous loop on the frozen graphs (any
gamma, any number of steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Plan
from ..errors import ConfigError
from .base import Mode, Rule, Schedule, check_gamma, check_mode, check_steps
from .propagate import propagate
from .sync import run_sync

__all__ = ["FPA", "FPARule"]


@dataclass(frozen=True)
class FPA:
    """Fixed-prediction assumption: predictions and Jacobians frozen at the feed-forward pass.

    With ``gamma=1`` and ``steps >= depth`` the error nodes reach BP's gradients on any DAG,
    leveled or not. ``steps=None`` means ``depth``.
    """

    gamma: float = 1.0
    steps: int | None = None
    mode: Mode = "auto"
    name: str = "fpa"

    def __post_init__(self) -> None:
        check_gamma(self.gamma, "FPA")
        check_steps(self.steps, "FPA")
        check_mode(self.mode, "FPA")


class FPARule(Rule):
    name = "fpa"
    config = FPA

    def steps(self, plan: Plan, cfg: FPA) -> int:
        return plan.depth if cfg.steps is None else cfg.steps

    def schedule(self, plan: Plan, cfg: FPA, trace: bool) -> Schedule:
        steps = self.steps(plan, cfg)
        exact_fixed_point = cfg.gamma == 1.0 and steps >= plan.depth
        if cfg.mode == "efficient" and not exact_fixed_point:
            raise ConfigError(
                f"FPA(mode='efficient') computes the fixed point, reached only with gamma=1 and "
                f"steps >= depth ({plan.depth}); got gamma={cfg.gamma}, steps={steps}. "
                f"Use mode='faithful' to run the synchronous updates."
            )
        mode = cfg.mode
        if mode == "auto":
            mode = "efficient" if exact_fixed_point and not trace else "faithful"
        return Schedule(mode, steps)  # predictions are frozen: nothing is re-evaluated

    def exactness_problems(self, plan: Plan, cfg: FPA) -> list[str]:
        problems = []
        if cfg.gamma != 1.0 and cfg.steps is not None:
            problems.append(f"gamma={cfg.gamma} with a finite number of steps")
        if cfg.steps is not None and cfg.steps < plan.depth:
            problems.append(f"steps={cfg.steps} < depth={plan.depth}")
        if cfg.gamma != 1.0 and cfg.steps is None:
            problems.append(f"gamma={cfg.gamma} (must be 1)")
        return problems

    def run(self, plan, ff, cfg: FPA, schedule: Schedule, target, loss_fn, trace):
        if schedule.mode == "efficient":
            return propagate(plan, ff, gamma=1.0, last_level=plan.depth)
        everyone = {v.vid for v in plan.hidden}
        steps = schedule.steps
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=steps,
            gamma=cfg.gamma,
            weights_at=lambda s: everyone if s == steps else None,
            recompute=False,
            trace=trace,
        )
