"""iPC: incremental predictive coding (Salvatori et al. 2024).

Value nodes *and* parameters move at every synchronous inference step. With ``lr > 0`` each step
applies ``theta -= lr * (dF/dtheta)`` in place (nothing is written to ``p.grad``: do not also
call an optimizer); with ``lr = 0`` the per-step gradients are averaged into ``p.grad`` for an
outer optimizer (parameters then stay fixed during inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Grads
from ..errors import ConfigError
from .base import Schedule, check_gamma, check_steps
from .il import ILRule
from .sync import run_sync

__all__ = ["IPC", "IPCRule"]


@dataclass(frozen=True)
class IPC:
    """Incremental PC: value nodes and parameters are updated at every inference step.

    ``lr`` is the parameter step applied inside inference; the summed update is also written to
    ``p.grad`` so an outer optimizer can be used instead (set ``lr=0``).
    """

    gamma: float = 0.1
    steps: int | None = None
    lr: float = 0.0
    name: str = "ipc"

    def __post_init__(self) -> None:
        check_gamma(self.gamma, "IPC")
        check_steps(self.steps, "IPC")
        if not (isinstance(self.lr, (int, float)) and self.lr >= 0):
            raise ConfigError(f"IPC: lr must be >= 0, got {self.lr!r}.")


class IPCRule(ILRule):
    """IL's schedule (synchronous, ``steps`` defaulting alike), parameters read at every step."""

    name = "ipc"
    config = IPC

    def run(self, plan, ff, cfg: IPC, schedule: Schedule, target, loss_fn, trace) -> Grads:
        steps = schedule.steps
        everyone = {v.vid for v in plan.hidden}
        applied = Grads()

        def apply(s: int, step_grads: Grads) -> None:
            step_grads.finish(plan, ff, retain=True)
            with torch.no_grad():
                for p, g in step_grads.params.items():
                    if cfg.lr > 0:
                        p.add_(g, alpha=-cfg.lr)
                    else:
                        applied.add_param(p, g, 1.0 / (steps + 1))
            step_grads.params.clear()
            step_grads.leaves.clear()

        run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=steps,
            gamma=cfg.gamma,
            weights_at=lambda s: everyone,
            recompute=True,
            trace=trace,
            on_step=apply,
            event_driven=cfg.lr == 0,  # moving weights change every prediction at once
        )
        if cfg.lr > 0:
            applied.params.clear()
            applied.written = False
        return applied
