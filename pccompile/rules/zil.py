"""Z-IL: zero-divergence inference learning (Song, Lukasiewicz, Xu, Bogacz 2020).

Value nodes start at the feed-forward pass, gamma = 1, and the parameter use of a vertex at level
``l`` is read once, at inference step ``t = l``; contributions are summed and applied after
inference. On a leveled graph this is exactly BP.

Two schedules, identical parameter updates (tested, bitwise):

* ``efficient``: the event-driven schedule of :mod:`pccompile.rules.propagate`.
* ``faithful``: the synchronous loop of :mod:`pccompile.rules.sync`, every value node every step,
  predictions re-evaluated from the current value nodes.

``init="zero"`` and ``step_offset != 0`` break one of Z-IL's conditions each (value nodes not
started at the feed-forward pass; weights read at the wrong step) and run only on the faithful
loop: they are there to show that the conditions are needed (``benchmarks/reproduce.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
        init: ``"forward"`` (Z-IL): value nodes start at the feed-forward pass. ``"zero"``
            starts them at 0, which breaks the match with BP (faithful mode only).
        step_offset: read the weights of a vertex at level ``l`` at step ``l + step_offset``
            instead of ``l`` (``steps`` then defaults to ``depth + 1 + step_offset``). Only 0 is
            exact; others show what reading a vertex at the wrong step does (faithful mode only).
    """

    gamma: float = 1.0
    steps: int | None = None
    mode: Mode = "auto"
    init: Literal["forward", "zero"] = "forward"
    step_offset: int = 0
    name: str = "zil"

    def __post_init__(self) -> None:
        check_gamma(self.gamma, "ZIL")
        check_steps(self.steps, "ZIL")
        check_mode(self.mode, "ZIL")
        if self.init not in ("forward", "zero"):
            raise ConfigError(f"ZIL: init must be 'forward' or 'zero', got {self.init!r}.")
        if not (isinstance(self.step_offset, int) and self.step_offset >= 0):
            raise ConfigError(f"ZIL: step_offset must be an int >= 0, got {self.step_offset!r}.")
        if self.mode == "efficient" and (self.init != "forward" or self.step_offset):
            raise ConfigError(
                "ZIL(mode='efficient') is the event-driven schedule of exact Z-IL; init='zero' "
                "and step_offset run on the synchronous loop: use mode='faithful' (or 'auto')."
            )

    @property
    def off_schedule(self) -> bool:
        """Whether an option moves this setting off Z-IL's schedule (init, step_offset)."""
        return self.init != "forward" or self.step_offset != 0


class ZILRule(Rule):
    name = "zil"
    config = ZIL

    def steps(self, plan: Plan, cfg: ZIL) -> int:
        return plan.depth + 1 + cfg.step_offset if cfg.steps is None else cfg.steps

    def schedule(self, plan: Plan, cfg: ZIL, trace: bool) -> Schedule:
        if cfg.mode == "efficient" and not plan.leveled:
            raise ConfigError(
                "ZIL(mode='efficient') needs a leveled graph (its schedule is only BP-equal when "
                "every edge spans one level); convert with level=True, or use mode='faithful' to "
                "simulate Z-IL on the unleveled graph."
            )
        mode = cfg.mode
        if mode == "auto":
            mode = (
                "efficient" if plan.leveled and not trace and not cfg.off_schedule else "faithful"
            )
        return Schedule(mode, self.steps(plan, cfg), records_state=mode == "faithful")

    def exactness_problems(self, plan: Plan, cfg: ZIL) -> list[str]:
        problems = []
        if cfg.gamma != 1.0:
            problems.append(f"gamma={cfg.gamma} (must be 1)")
        if cfg.steps is not None and cfg.steps < plan.depth + 1 + cfg.step_offset:
            problems.append(f"steps={cfg.steps} < depth+1={plan.depth + 1}")
        if cfg.init != "forward":
            problems.append(f"init={cfg.init!r} (value nodes must start at the feed-forward pass)")
        if cfg.step_offset:
            problems.append(f"step_offset={cfg.step_offset} (weights must be read at t = level)")
        if not plan.leveled:
            problems.append("the graph is not leveled (convert with level=True)")
        return problems

    def run(self, plan, ff, cfg: ZIL, schedule: Schedule, target, loss_fn, trace):
        if schedule.mode == "efficient":
            return propagate(plan, ff, gamma=cfg.gamma, last_level=schedule.steps - 1)
        by_level, k = plan.by_level, cfg.step_offset
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=max(schedule.steps - 1, 0),
            gamma=cfg.gamma,
            weights_at=lambda s: set(by_level[s - k]) if 0 <= s - k < len(by_level) else None,
            recompute=True,
            trace=trace,
            init=cfg.init,
        )
