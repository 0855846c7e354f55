"""IL: inference learning (Whittington & Bogacz 2017), an approximation of BP.

``steps`` synchronous inference steps (:mod:`pccompile.rules.sync`) of size ``gamma`` on the full
energy ``F = sum 1/2 ||eps||^2 + w * L`` (``w`` the output precision), predictions re-evaluated
from the current value nodes at every step; then every parameter from the final state, the
update multiplied by ``1/w`` so that small precisions approach BP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..engine import Plan
from ..errors import ConfigError
from .base import Rule, Schedule, check_gamma, check_steps
from .sync import run_sync

__all__ = ["IL", "ILRule", "default_steps"]


@dataclass(frozen=True)
class IL:
    """Standard inference learning: ``steps`` inference steps of size ``gamma`` on the full
    energy, then every weight from the final state. Approximates BP.

    Args:
        output_precision: weight ``1/k`` of the loss term in the energy; the parameter update is
            multiplied by ``k`` so that small precisions approach BP (Whittington & Bogacz).
        init: ``"forward"`` starts value nodes at the feed-forward pass.
    """

    gamma: float = 0.1
    steps: int | None = None
    output_precision: float = 1.0
    init: Literal["forward"] = "forward"
    name: str = "il"

    def __post_init__(self) -> None:
        check_gamma(self.gamma, "IL")
        check_steps(self.steps, "IL")
        if not (isinstance(self.output_precision, (int, float)) and self.output_precision > 0):
            raise ConfigError(f"IL: output_precision must be > 0, got {self.output_precision!r}.")
        if self.init != "forward":
            raise ConfigError(f"IL: init must be 'forward', got {self.init!r}.")


def default_steps(plan: Plan) -> int:
    """At least depth + 1 (so the error reaches every vertex), and 20 for small gammas."""
    return max(plan.depth + 1, 20)


class ILRule(Rule):
    name = "il"
    config = IL

    def steps(self, plan: Plan, cfg: IL) -> int:
        return default_steps(plan) if cfg.steps is None else cfg.steps

    def schedule(self, plan: Plan, cfg: IL, trace: bool) -> Schedule:
        return Schedule("faithful", self.steps(plan, cfg), records_state=True)

    def run(self, plan, ff, cfg: IL, schedule: Schedule, target, loss_fn, trace):
        everyone = {v.vid for v in plan.hidden}
        steps, w = schedule.steps, float(cfg.output_precision)
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=steps,
            gamma=cfg.gamma,
            weights_at=lambda s: everyone if s == steps else None,
            recompute=True,
            output_weight=w,
            param_scale=-1.0 / w,
            trace=trace,
        )
