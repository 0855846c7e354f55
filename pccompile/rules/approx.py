"""Approximate rules on the synchronous loop of :mod:`pccompile.rules.sync`.

* ``il`` — inference learning (Whittington & Bogacz 2017): ``steps`` synchronous inference steps
  of size ``gamma`` on the full energy ``F = sum 1/2 ||eps||^2 + w * L`` (``w`` the output
  precision), then every parameter from the final state, the update multiplied by ``1/w``.
* ``ipc`` — incremental PC (Salvatori et al. 2024): value nodes *and* parameters move at every
  step. With ``lr > 0`` each step applies ``theta -= lr * (dF/dtheta)`` in place (nothing is
  written to ``p.grad``: do not also call an optimizer); with ``lr = 0`` the per-step gradients
  are averaged into ``p.grad`` for an outer optimizer (parameters then stay fixed during inference).
"""

from __future__ import annotations

import torch

from ..config import IL, IPC
from ..engine import FeedForward, Grads, Plan
from . import Trace
from .sync import run_sync


def default_steps(plan: Plan) -> int:
    """At least depth + 1 (so the error reaches every vertex), and 20 for small gammas."""
    return max(plan.depth + 1, 20)


def run(
    plan: Plan, ff: FeedForward, cfg: IL | IPC, steps: int, target, loss_fn, trace: Trace | None
) -> Grads:
    everyone = {v.vid for v in plan.hidden}
    if isinstance(cfg, IL):
        w = float(cfg.output_precision)
        grads = run_sync(
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
        return grads
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
