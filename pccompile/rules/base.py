"""The rule protocol: what every learning rule tells :class:`~pccompile.module.PCModule`.

A rule is one object (one file each in this package, registered in :mod:`pccompile.rules`) with a
frozen, validated config dataclass of its options. ``PCModule.learn`` and the CLI only talk to
rules through this protocol:

``schedule(plan, cfg, trace)``      which schedule runs (``efficient`` / ``faithful``) and how
                                    many inference steps; raises ConfigError for impossible asks
``exactness_problems(plan, cfg)``   why this setting cannot equal BP (empty: it does)
``run(plan, ff, cfg, schedule, target, loss_fn, trace)``
                                    PC inference from the feed-forward pass -> :class:`Grads`

``bp`` is the one rule with ``autograd = True``: the reference, one backward through the whole
model (:meth:`Rule.backward`); every other rule runs PC mechanics on the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch.nn as nn

from ..engine import FeedForward, Grads, Plan
from ..errors import ConfigError
from .report import LearnReport, Trace

__all__ = ["Mode", "Rule", "Schedule", "check_gamma", "check_mode", "check_steps"]

Mode = Literal["auto", "efficient", "faithful"]
MODES = ("auto", "efficient", "faithful")


@dataclass(frozen=True)
class Schedule:
    """What one learn step runs.

    mode: ``efficient`` (event-driven, one local VJP per vertex) or ``faithful`` (every value
        node at every step, as the papers write it); ``autograd`` for bp.
    steps: inference steps.
    records_state: re-evaluations need each stochastic/stateful vertex's feed-forward state.
    """

    mode: str
    steps: int
    records_state: bool = False


class Rule:
    """Base of every learning rule (see the module docstring)."""

    name: ClassVar[str]
    config: ClassVar[type]
    autograd: ClassVar[bool] = False
    granularity: ClassVar[str] = "op"  # convert's default vertex granularity for this rule
    approximate: ClassVar[bool] = False  # runs engine.inference (clamp=, infer)

    def schedule(self, plan: Plan, cfg: Any, trace: bool) -> Schedule:
        raise NotImplementedError

    def exactness_problems(self, plan: Plan, cfg: Any) -> list[str]:
        return [f"rule {self.name!r} approximates BP"]

    def run(
        self,
        plan: Plan,
        ff: FeedForward,
        cfg: Any,
        schedule: Schedule,
        target: Any,
        loss_fn: Callable,
        trace: Trace | None,
    ) -> Grads:
        raise NotImplementedError

    def backward(
        self, model: nn.Module, inputs: tuple, target: Any, loss_fn: Callable, kwargs: dict
    ) -> LearnReport:
        raise NotImplementedError(f"rule {self.name!r} runs on the PC engine, not autograd")


def check_gamma(gamma: float, name: str) -> None:
    if not (isinstance(gamma, (int, float)) and 0.0 < float(gamma) <= 1.0):
        raise ConfigError(f"{name}: gamma must be a number in (0, 1], got {gamma!r}.")


def check_steps(steps: int | None, name: str) -> None:
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise ConfigError(
            f"{name}: steps must be a non-negative int or None (= the graph's default), "
            f"got {steps!r}."
        )


def check_mode(mode: str, name: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"{name}: mode must be one of {MODES}, got {mode!r}.")
