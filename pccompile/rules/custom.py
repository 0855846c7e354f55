"""The hook for a custom inference loop: the energy of one batch as a function of the value nodes.

``pccompile.energy_function(pcm, *inputs, target=y)`` runs the feed-forward pass and returns an
:class:`EnergyFunction`; a researcher's own loop (any optimiser, schedule, stopping rule,
sampler) moves the value nodes on it, and :meth:`EnergyFunction.learn` then writes the local
weight gradients at the state the loop reached, as IL does at its final state::

    ef = pccompile.energy_function(pcm, x, target=y)
    xs = ef.start()                                   # vertex name -> [value-node tensors]
    for _ in range(20):
        grads = ef.grad(xs)                           # dF/dx, one autograd call
        with torch.no_grad():
            for name in xs:
                for t, g in zip(xs[name], grads[name]):
                    t -= 0.1 * g
    ef.learn(xs)                                      # p.grad += dF/dtheta / (w B), locally

``ef(xs)`` is ``F`` itself (differentiable in the value nodes *and* the parameters: take its
gradient with ``torch.autograd.grad(F, tensors)``, not ``F.backward()``, which would also write
the parameters' ``.grad``). Ten plain steps of ``gamma`` on it and ``learn`` give exactly
``IL(steps=10, gamma=gamma)``'s gradients (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..engine import FeedForward, Plan, feed_forward
from ..engine.inference import Setup, energy_at, resolve, run_inference
from ..errors import ConfigError
from .il import setup_of

__all__ = ["EnergyFunction", "energy_function"]


@dataclass(eq=False)
class EnergyFunction:
    """One batch's energy ``F(x)`` over the free value nodes (see the module docstring)."""

    plan: Plan
    ff: FeedForward
    target: Any
    loss_fn: Callable
    setup: Setup

    def __post_init__(self) -> None:
        net = resolve(self.plan, self.ff, self.setup)
        self._free = {v.name: v.vid for v in net.free}

    @property
    def names(self) -> list[str]:
        """The free vertices, in graph order."""
        return list(self._free)

    def start(self) -> dict[str, list[torch.Tensor]]:
        """The feed-forward values of the free vertices (fresh tensors requiring grad)."""
        return {
            n: [t.detach().clone().requires_grad_() for t in self.ff.flat[vid]]
            for n, vid in self._free.items()
        }

    def _by_vid(self, xs: dict[str, list[torch.Tensor]]) -> dict[int, list[torch.Tensor]]:
        bad = sorted(set(xs) - set(self._free))
        if bad:
            raise ConfigError(f"no free vertex named {bad}; they are {self.names}.")
        return {self._free[n]: list(ts) for n, ts in xs.items()}

    def __call__(self, xs: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """``F`` at the value nodes ``xs`` (vertices not named sit at the feed-forward pass)."""
        return energy_at(
            self.plan, self.ff, self.target, self.loss_fn, self.setup, self._by_vid(xs)
        )

    def grad(self, xs: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """``dF/dx`` for every tensor of ``xs`` (zeros where ``F`` does not depend on it)."""
        flat = [t for ts in xs.values() for t in ts]
        got = torch.autograd.grad(self(xs), flat, allow_unused=True)
        out, k = {}, 0
        for n, ts in xs.items():
            out[n] = [torch.zeros_like(t) if g is None else g for t, g in zip(ts, got[k:])]
            k += len(ts)
        return out

    def learn(self, xs: dict[str, list[torch.Tensor]]) -> None:
        """Accumulate every parameter's local gradient at the state ``xs`` into ``p.grad``
        (``dF/dtheta / (w B)``, from each vertex's own prediction and error, as IL)."""
        kept = []
        local = Setup(**{**self.setup.__dict__, "steps": 0, "tol": None})
        run_inference(
            self.plan,
            self.ff,
            self.target,
            self.loss_fn,
            local,
            params_at=lambda s: True,
            on_params=lambda s, g: kept.append(g),
            x0={vid: [t.detach() for t in ts] for vid, ts in self._by_vid(xs).items()},
        )
        if kept:
            kept[0].finish(self.plan, self.ff)
            kept[0].write(self.plan)


def energy_function(
    pcm: Any, *inputs: Any, target: Any, loss_fn: Callable | None = None, **options: Any
) -> EnergyFunction:
    """The :class:`EnergyFunction` of one batch for ``pcm`` (a :class:`pccompile.PCModule`).

    ``options`` are IL's energy options (``output``, ``output_precision``, ``precision``,
    ``energies``, ``beta``...); ``clamp=`` holds vertices as in ``learn``.
    """
    from ..checks import check_inputs
    from ..frontend.annotate import complete_inputs
    from ..module import _checked
    from . import make_rule

    loss_fn = pcm._pc_loss_fn if loss_fn is None else loss_fn
    if loss_fn is None:
        raise ConfigError("energy_function needs loss_fn=..., or convert(..., loss_fn=...).")
    clamp = options.pop("clamp", None)
    cfg = make_rule("il", **options)
    plan = pcm.plan
    inputs = complete_inputs(plan.gm, inputs)
    check_inputs(inputs, plan.n_inputs, pcm._device())
    ff = feed_forward(plan, inputs, target, _checked(loss_fn), record_state=True)
    w = cfg.beta if cfg.beta is not None else cfg.output_precision
    return EnergyFunction(plan, ff, target, loss_fn, setup_of(cfg, 0, clamp, w=w))
