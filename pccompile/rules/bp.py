"""BP: plain autograd backward through the whole model, the reference for every rule.

The one rule that is not PC: ``learn(rule="bp")`` runs the original module's forward and
``loss.backward()``, so a test (or :mod:`pccompile.testing`) can compare any rule against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from ..checks import scalar_loss
from ..engine import Plan
from .base import Rule
from .report import LearnReport

__all__ = ["BP", "BPRule"]


@dataclass(frozen=True)
class BP:
    """Plain autograd backward through the whole model: the reference for every rule."""

    name: str = "bp"


class BPRule(Rule):
    name = "bp"
    config = BP
    autograd = True

    def exactness_problems(self, plan: Plan, cfg: BP) -> list[str]:
        return []

    def backward(
        self, model: nn.Module, inputs: tuple, target: Any, loss_fn: Callable, kwargs: dict
    ) -> LearnReport:
        out = model(*inputs, **kwargs)
        loss = scalar_loss(loss_fn(out, target))
        if loss.requires_grad:  # a model without trainable parameters has nothing to learn
            loss.backward()
        return LearnReport("bp", "autograd", float(loss.detach()), 0, output=tree_map(detach, out))


def detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x
