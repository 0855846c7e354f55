"""IL: inference learning (Whittington & Bogacz 2017), an approximation of BP.

``steps`` fused inference steps (:mod:`pccompile.engine.inference`) of size ``gamma`` on the
energy ``F = sum_v pi_v E_v(x_v, mu_v) + w * B * L(out, y)``, every prediction re-evaluated from
the current value nodes at each step; then every parameter's gradient from the final state,
``p.grad += dF/dtheta / (w * B)`` (``B`` the batch size, ``w`` the output precision).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..engine import Grads, Plan
from ..engine.inference import Inference, Setup, run_inference
from ..errors import ConfigError
from .base import Rule, Schedule, check_gamma, check_steps

__all__ = ["IL", "ILRule", "default_steps", "check_approximate"]

OUTPUTS = ("clamp", "free")


@dataclass(frozen=True)
class IL:
    """Standard inference learning: ``steps`` inference steps of size ``gamma`` on the energy,
    then every weight's gradient from the final state. Approximates BP.

    Args:
        gamma: inference step size (per sample: the energy sums over the batch).
        steps: inference steps ``T`` (default: ``max(depth + 1, 20)``).
        output: ``"clamp"``: the output is clamped to the target, its energy the loss on the
            prediction. ``"free"``: a free output value node with its own error, the loss on it.
        output_precision: ``w``, the weight of the loss term in the energy. The gradient is
            divided by ``w``, so small ``w`` (errors in the small-perturbation regime) approaches
            BP; ``w = 1`` is the usual PC energy.
        precision: vertex name -> precision ``pi_v`` of its energy term (default 1).
        energies: vertex name -> energy ``E_v(x, mu)`` (batch-summed; default squared error;
            see :mod:`pccompile.energies`).
        value_optimizer: ``params -> torch.optim.Optimizer`` for the value nodes (default:
            plain steps of ``gamma``).
        init: ``"forward"``: value nodes start at the feed-forward pass.
        compile: run the whole ``T``-step loop as one ``torch.compile``d function
            (:mod:`pccompile.engine.compiled`; compiled once per input shape, the time on
            ``report.compile_seconds``). ``True`` uses inductor; a string names another
            ``torch.compile`` backend (``"aot_eager"`` compiles in seconds). Same numbers as the
            eager loop up to rounding.
    """

    gamma: float = 0.1
    steps: int | None = None
    output: Literal["clamp", "free"] = "clamp"
    output_precision: float = 1.0
    precision: Mapping[str, float] = field(default_factory=dict)
    energies: Mapping[str, Callable] = field(default_factory=dict)
    value_optimizer: Callable | None = None
    init: Literal["forward"] = "forward"
    compile: bool | str = False
    name: str = "il"

    def __post_init__(self) -> None:
        check_approximate(self, "IL")


def check_approximate(cfg: Any, name: str) -> None:
    """Validate the options IL and iPC share."""
    check_gamma(cfg.gamma, name)
    check_steps(cfg.steps, name)
    if not (isinstance(cfg.output_precision, (int, float)) and cfg.output_precision > 0):
        raise ConfigError(f"{name}: output_precision must be > 0, got {cfg.output_precision!r}.")
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"{name}: output must be one of {OUTPUTS}, got {cfg.output!r}.")
    if cfg.init != "forward":
        raise ConfigError(f"{name}: init must be 'forward', got {cfg.init!r}.")
    for k, v in dict(cfg.precision).items():
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{name}: precision[{k!r}] must be a number > 0, got {v!r}.")
    for k, fn in dict(cfg.energies).items():
        if not callable(fn):
            raise ConfigError(f"{name}: energies[{k!r}] must be callable (x, mu) -> energy.")
    if not isinstance(cfg.compile, (bool, str)):
        raise ConfigError(f"{name}: compile must be True/False or a torch.compile backend name.")
    if cfg.value_optimizer is not None and not callable(cfg.value_optimizer):
        raise ConfigError(
            f"{name}: value_optimizer must be a callable params -> torch.optim.Optimizer, e.g. "
            f"lambda xs: torch.optim.Adam(xs, lr=0.1)."
        )


def compiled(
    plan, ff, target, loss_fn, setup: Setup, trace, mode: str, *, backend, lr: float = 0.0
) -> Grads:
    """The rule's loop through :func:`pccompile.engine.compiled.run_compiled`."""
    from ..engine.compiled import run_compiled  # imports torch.compile's machinery lazily

    if trace is not None and trace.per_vertex:
        raise ConfigError("compile=True records the energy per step, not a per-vertex trace.")
    backend = "inductor" if backend is True else backend
    new, energy, loop, unreached = run_compiled(
        plan, ff, target, loss_fn, setup, mode=mode, lr=lr, backend=backend
    )
    grads = Grads()
    if mode == "il":
        for p, g in new.items():
            grads.add_param(p, g, 1.0)
    else:  # the loop's updated parameters
        with torch.no_grad():
            for p, t in new.items():
                p.copy_(t)
        grads.written = False
    grads.run = Inference({}, [], energy, unreached, compile_seconds=loop.compile_seconds)
    return grads


def default_steps(plan: Plan) -> int:
    """At least depth + 1 (so the error reaches every vertex), and 20 for small gammas."""
    return max(plan.depth + 1, 20)


def setup_of(
    cfg: Any, steps: int, clamp: Mapping | None = None, free_inputs: tuple[int, ...] = ()
) -> Setup:
    """The inference :class:`Setup` of an IL/iPC config, for ``steps`` steps."""
    return Setup(
        gamma=cfg.gamma,
        steps=steps,
        output=cfg.output,
        output_precision=float(cfg.output_precision),
        precision=dict(cfg.precision),
        energies=dict(cfg.energies),
        clamp=dict(clamp or {}),
        free_inputs=tuple(free_inputs),
        value_optimizer=cfg.value_optimizer,
    )


class ILRule(Rule):
    name = "il"
    config = IL
    granularity = "layer"
    approximate = True

    def steps(self, plan: Plan, cfg: IL) -> int:
        return default_steps(plan) if cfg.steps is None else cfg.steps

    def schedule(self, plan: Plan, cfg: IL, trace: bool) -> Schedule:
        return Schedule("faithful", self.steps(plan, cfg), records_state=True)

    def run(self, plan, ff, cfg: IL, schedule: Schedule, target, loss_fn, trace, clamp=None):
        steps = schedule.steps
        if cfg.compile:
            setup = setup_of(cfg, steps, clamp)
            return compiled(plan, ff, target, loss_fn, setup, trace, "il", backend=cfg.compile)
        out: list[Grads] = []
        run = run_inference(
            plan,
            ff,
            target,
            loss_fn,
            setup_of(cfg, steps, clamp),
            params_at=lambda s: s == steps,
            on_params=lambda s, g: out.append(g),
            trace=trace,
        )
        grads = out[0] if out else Grads()
        grads.run = run
        return grads
