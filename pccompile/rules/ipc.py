"""iPC: incremental predictive coding (Salvatori et al. 2024).

Value nodes *and* parameters move at every inference step, from the same state: each of the
``steps + 1`` evaluations of the fused step (:mod:`pccompile.engine.inference`) takes the
parameter gradient ``dF/dtheta / (w * B)`` along with the value nodes' one. Three ways to apply
it:

* ``optimizer=opt``: each evaluation writes that gradient into ``p.grad`` (replacing it) and
  calls ``opt.step()``, as PC libraries run iPC; do not step ``opt`` again after ``learn``.
* ``lr > 0``: a plain step ``theta -= lr * grad`` inside inference; nothing is written to
  ``p.grad``.
* ``lr = 0`` (default): parameters stay fixed during inference and the per-step gradients are
  averaged into ``p.grad`` for an outer optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..engine import Grads
from ..engine.inference import run_inference
from ..errors import ConfigError
from .base import Schedule
from .il import ILRule, check_approximate, compiled, setup_of

__all__ = ["IPC", "IPCRule", "STEP_GRADS"]

#: Called as ``hook(params)`` with each evaluation's parameter gradients (a dict ``Parameter ->
#: tensor``, replaced in place by the hook's values) just before iPC applies them inside
#: inference: :class:`pccompile.distributed.DataParallel` averages them over the ranks there, so
#: every rank takes the same step.
STEP_GRADS: ContextVar[Callable[[dict], None] | None] = ContextVar("STEP_GRADS", default=None)


@dataclass(frozen=True)
class IPC:
    """Incremental PC: value nodes and parameters are updated at every inference step.

    Takes IL's options (``gamma``, ``steps``, ``output``, ``output_precision``, ``precision``,
    ``energies``, ``value_optimizer``) and how the per-step parameter update is applied:
    ``optimizer`` (a ``torch.optim.Optimizer`` stepped at every evaluation), ``lr`` (plain steps
    inside inference) or neither (averaged into ``p.grad``).
    """

    gamma: float = 0.1
    steps: int | None = None
    lr: float = 0.0
    optimizer: Any = None
    output: Literal["clamp", "free"] = "clamp"
    output_precision: float = 1.0
    precision: Mapping[str, float] = field(default_factory=dict)
    energies: Mapping[str, Callable] = field(default_factory=dict)
    value_optimizer: Callable | None = None
    init: Literal["forward"] = "forward"
    compile: bool | str = False
    name: str = "ipc"

    def __post_init__(self) -> None:
        check_approximate(self, "IPC")
        if not (isinstance(self.lr, (int, float)) and self.lr >= 0):
            raise ConfigError(f"IPC: lr must be >= 0, got {self.lr!r}.")
        if self.optimizer is not None:
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise ConfigError(
                    f"IPC: optimizer must be a torch.optim.Optimizer over the model's "
                    f"parameters, got {type(self.optimizer).__name__}."
                )
            if self.lr > 0:
                raise ConfigError("IPC: give either optimizer= or lr=, not both.")
        if self.compile and not self.lr > 0:
            raise ConfigError(
                "IPC(compile=True) runs the weight steps inside the compiled loop: give lr > 0 "
                "(an optimizer object, or lr=0's averaging, run eagerly)."
            )


class IPCRule(ILRule):
    """IL's schedule (``steps`` defaulting alike), parameters read at every evaluation."""

    name = "ipc"
    config = IPC

    def run(self, plan, ff, cfg: IPC, schedule: Schedule, target, loss_fn, trace, clamp=None):
        steps = schedule.steps
        if cfg.compile:
            setup = setup_of(cfg, steps, clamp)
            return compiled(
                plan, ff, target, loss_fn, setup, trace, "ipc", backend=cfg.compile, lr=cfg.lr
            )
        averaged = Grads()
        moves = cfg.lr > 0 or cfg.optimizer is not None

        def apply(s: int, g: Grads) -> None:
            if not moves:
                for p, t in g.params.items():
                    averaged.add_param(p, t, 1.0 / (steps + 1))
                for slot, t in g.leaves.items():
                    averaged.add_leaf(slot, t, 1.0 / (steps + 1))
                return
            g.finish(plan, ff, retain=True)
            if (average := STEP_GRADS.get()) is not None:
                average(g.params)
            with torch.no_grad():
                if cfg.optimizer is None:
                    for p, t in g.params.items():
                        p.add_(t, alpha=-cfg.lr)
                    return
                for p in plan.live_params:
                    p.grad = None
                for p, t in g.params.items():
                    p.grad = t.clone() if p.grad is None else p.grad + t
            cfg.optimizer.step()

        run = run_inference(
            plan,
            ff,
            target,
            loss_fn,
            setup_of(cfg, steps, clamp),
            params_at=lambda s: True,
            on_params=apply,
            params_move=moves,
            trace=trace,
        )
        if moves:
            averaged.written = False
        averaged.run = run
        return averaged
