"""The PC energy as a plain module: value nodes in, error nodes and total energy out.

Reads: a compiled plan and a loss. Writes nothing.
``EnergyModule(plan, loss_fn)(*inputs, target, *values)`` evaluates every prediction
``mu_v = g_v(x_parents)`` from the *given* value nodes, and returns
``(eps_1, ..., eps_n, F)`` with ``eps_v = x_v - mu_v`` and
``F = sum_v 1/2 ||eps_v||^2 + L(mu_out, target)``. The value nodes are the plan's hidden vertices
in the graph's order (identity vertices where levelling put them), one tensor per float output.
This is the graph the ONNX ``energy`` export writes, and a way to evaluate a PCN's energy
anywhere. Modules run as they do in the feed-forward pass (a train-mode BatchNorm updates its
running statistics, as a forward would); random ops draw in the forward's order, so with the same
seed as the feed-forward pass they draw the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..frontend.annotate import float_leaves
from .evaluate import call_vertex, feed_forward, rebuild, walk
from .plan import Plan

__all__ = ["EnergyModule", "value_node_names", "feedforward_values"]


def value_node_names(plan: Plan) -> list[str]:
    """Names of the value-node tensors, in the order EnergyModule takes them."""
    names = []
    for v in plan.hidden:
        n = len(v.node.meta["pc"].shapes)
        names += [v.name] if n == 1 else [f"{v.name}.{k}" for k in range(n)]
    return names


def feedforward_values(
    plan: Plan, inputs: tuple, target: Any, loss_fn: Callable
) -> list[torch.Tensor]:
    """The value nodes at the feed-forward initialisation (all errors zero there)."""
    ff = feed_forward(plan, inputs, target, loss_fn, record_state=False)
    return [t.detach() for v in plan.hidden for t in ff.flat[v.vid]]


class EnergyModule(nn.Module):
    """See the module docstring. Shares the plan's GraphModule (and so the model's weights)."""

    def __init__(self, plan: Plan, loss_fn: Callable, n_inputs: int | None = None):
        super().__init__()
        self.gm = plan.gm
        self.__dict__["plan"] = plan
        self.__dict__["loss_fn"] = loss_fn
        self.n_inputs = plan.n_inputs if n_inputs is None else n_inputs
        self.training = plan.training  # its own flag: train() would reset the user's modules

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        plan = self.plan
        inputs, target, values = (
            args[: self.n_inputs],
            args[self.n_inputs],
            args[self.n_inputs + 1 :],
        )
        hidden = plan.hidden
        flat: list = [None] * len(plan.vertices)
        leaves: list = [None] * len(plan.vertices)
        k = 0
        for v in hidden:
            n = len(v.node.meta["pc"].shapes)
            flat[v.vid] = list(values[k : k + n])
            k += n
        if k != len(values):
            raise ValueError(f"EnergyModule expects {k} value-node tensors, got {len(values)}.")
        mus: dict[int, list] = {}

        # One pass in the traced order: each prediction is evaluated once from the given value
        # nodes of its parents (so random draws happen once, in the forward's order).
        def vertex(v, env: list) -> Any:
            if v.kind == "identity":  # its prediction is its source's value node
                leaves[v.vid] = rebuild(leaves[v.source], flat[v.vid])
                return leaves[v.vid]
            mu = call_vertex(plan, v, env, leaves, recompute=False)
            mus[v.vid] = float_leaves(mu)
            leaves[v.vid] = rebuild(mu, flat[v.vid])
            return leaves[v.vid]

        env = walk(plan, inputs, vertex)
        errors = []
        energy = 0.0
        for v in hidden:
            for x, mu in zip(flat[v.vid], flat[v.source] if v.kind == "identity" else mus[v.vid]):
                e = x - mu
                errors.append(e)
                energy = energy + 0.5 * (e * e).sum()
        output = plan.read_output(env, leaves)
        energy = energy + self.loss_fn(output, target)
        return (*errors, energy)
