"""ePC: error-parameterised predictive coding (Goemaere et al. 2025, arXiv 2505.20137).

Each free vertex's value is ``z_v = g_v(z_parents) + eps_v``: the errors ``eps_v`` are the
variables, starting at zero (``z`` at the feed-forward pass), and inference takes ``steps``
gradient steps ``eps -= gamma * dF/deps`` on the same energy as IL,
``F = sum_v pi_v E_v(z_v, g_v(z_parents)) + w B L(out(z), y)``
(:func:`pccompile.engine.inference.run_error_inference`). Because every ``z`` depends on every
upstream ``eps``, ``dF/deps`` is one **reverse pass over the whole graph** per step: the
inference is not local (it is BP's backward through the reparameterised network, memory at
BP's scale), and the error reaches every vertex at the first step, however deep.

The weight update is local, as in IL: every parameter's gradient is read from its own vertex's
prediction at the final states and its own error, ``p.grad += dF/dtheta / (w B)``
(:func:`~pccompile.engine.inference.local_param_grads`; the error is used as relaxed, not
recomputed as ``z - mu``, so an error far below the value's magnitude is not rounded away).
One step from ``eps = 0`` gives ``eps_v = -gamma w B dL/dz_v``, so a vertex with an error
variable gets ``gamma`` times BP's gradient up to ``O(gamma^2)`` (the states moved by
``O(gamma)``); a vertex the clamped output reads directly gets BP's, up to ``O(gamma)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..engine import Grads, Plan
from ..engine.inference import (
    NEVER,
    Inference,
    Setup,
    local_param_grads,
    resolve,
    run_error_inference,
    unreached,
)
from ..errors import ConfigError
from .il import ILRule, check_approximate, compiled

__all__ = ["EPC", "EPCRule"]


@dataclass(frozen=True)
class EPC:
    """Error-parameterised PC: ``steps`` gradient steps of size ``gamma`` on the errors (one
    reverse pass over the graph each), then the local weight gradient at the states.

    Args:
        gamma: the error step size (per sample, as IL's ``gamma``; the ePC papers' ``e_lr``).
        steps: error steps ``T`` (default 20; the ePC paper uses 5).
        error_optimizer: ``params -> torch.optim.Optimizer`` over the errors (default plain
            steps of ``gamma``).
        output, output_precision, precision, energies, beta, nudging: as in
            :class:`pccompile.IL`.
        compile: run the error steps and the local weight gradient as one ``torch.compile``d
            function (:mod:`pccompile.engine.compiled`; as ``IL(compile=...)``, with its limits).
    """

    gamma: float = 0.1
    steps: int | None = None
    error_optimizer: Callable | None = None
    output: Literal["clamp", "free"] = "clamp"
    output_precision: float = 1.0
    precision: Mapping[str, float] = field(default_factory=dict)
    energies: Mapping[str, Callable] = field(default_factory=dict)
    beta: float | None = None
    nudging: Literal["positive", "negative", "centered"] = "positive"
    compile: bool | str = False
    name: str = "epc"

    def __post_init__(self) -> None:
        check_approximate(self, "EPC")


DEFAULT_STEPS = 20


class EPCRule(ILRule):
    name = "epc"
    config = EPC

    def steps(self, plan: Plan, cfg: EPC) -> int:
        return DEFAULT_STEPS if cfg.steps is None else cfg.steps

    def run_phase(self, plan, ff, cfg: EPC, setup: Setup, target, loss_fn, trace) -> Grads:
        if cfg.compile:
            if cfg.error_optimizer is not None:
                raise ConfigError(
                    "EPC(compile=True) takes plain error steps: drop error_optimizer."
                )
            return compiled(plan, ff, target, loss_fn, setup, trace, "epc", backend=cfg.compile)
        states, errors, energy = run_error_inference(
            plan, ff, target, loss_fn, setup, error_optimizer=cfg.error_optimizer, trace=trace
        )
        grads = local_param_grads(plan, ff, target, loss_fn, setup, states, errors)
        net = resolve(plan, ff, setup)
        # one reverse pass brings the error to every vertex the graph connects to the loss
        missed = unreached(net, net.first_error, NEVER - 1 if setup.steps else 0)
        by_vid = {v.vid: v for v in plan.vertices}
        silent = [
            by_vid[vid].name
            for vid, eps in errors.items()
            if (by_vid[vid].params or by_vid[vid].param_leaves)
            and by_vid[vid].name not in missed
            and not any(bool(e.any()) for e in eps)
        ]
        values = {by_vid[vid].name: z for vid, z in states.items()}
        inputs = [ff.env[s] for s in plan.input_slots]
        grads.run = Inference(values, inputs, energy, missed, silent=silent, steps=setup.steps)
        return grads
