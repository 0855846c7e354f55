"""IL: inference learning (Whittington & Bogacz 2017), an approximation of BP.

``steps`` fused inference steps (:mod:`pccompile.engine.inference`) of size ``gamma`` on the
energy ``F = sum_v pi_v E_v(x_v, mu_v) + w * B * L(out, y)``, every prediction re-evaluated from
the current value nodes at each step; then every parameter's gradient from the final state,
``p.grad += dF/dtheta / (w * B)`` (``B`` the batch size, ``w`` the output precision).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..engine import Grads, Plan
from ..engine.inference import Inference, Setup, run_inference
from ..errors import ConfigError, LargeStepWarning
from .base import Rule, Schedule, check_steps

__all__ = ["IL", "ILRule", "default_steps", "check_approximate", "initial_values", "phases"]

OUTPUTS = ("clamp", "free")
NUDGINGS = ("positive", "negative", "centered")
INITS = ("forward", "zeros", "normal")


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
        init: where the value nodes start: ``"forward"`` (the feed-forward pass, the amortised
            start), ``"zeros"``, ``"normal"`` (standard normal draws from torch's global RNG) or
            a callable ``(vertex_name, feed_forward_value) -> tensor``. Any start but
            ``"forward"`` makes every error non-zero from step 0 (nothing is skipped).
        beta: nudging (pcx's PN/NN/CN): the loss term is weighted by ``beta`` instead of
            ``output_precision`` and the gradient divided by it. ``None``: no nudging.
        nudging: ``"positive"`` (weight ``+beta``), ``"negative"`` (``-beta``) or
            ``"centered"`` (both phases from the same start, their gradients averaged: at
            equilibrium it approaches BP at second order in ``beta``, the others at first).
        vertex_gamma: vertex name -> its own step size (the others take ``gamma``).
        vertex_steps: vertex name -> the inference steps its value node moves in (it is held
            after that; the others move for all ``steps``).
        tol: stop inference early once the energy changes by less than ``tol`` relative to
            the previous step (the weights are then read at that state); ``None``: always
            ``steps`` steps.
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
    init: str | Callable = "forward"
    beta: float | None = None
    nudging: Literal["positive", "negative", "centered"] = "positive"
    tol: float | None = None
    vertex_gamma: Mapping[str, float] = field(default_factory=dict)
    vertex_steps: Mapping[str, int] = field(default_factory=dict)
    compile: bool | str = False
    name: str = "il"

    def __post_init__(self) -> None:
        check_approximate(self, "IL")


def check_approximate(cfg: Any, name: str) -> None:
    """Validate the options IL, iPC, ePC and MCPC share."""
    check_step_size(cfg.gamma, f"{name}: gamma")
    check_steps(cfg.steps, name)
    for k, g in dict(getattr(cfg, "vertex_gamma", {})).items():
        check_step_size(g, f"{name}: vertex_gamma[{k!r}]")
    for k, n in dict(getattr(cfg, "vertex_steps", {})).items():
        if not (isinstance(n, int) and n >= 0):
            raise ConfigError(f"{name}: vertex_steps[{k!r}] must be an int >= 0, got {n!r}.")
    if (getattr(cfg, "vertex_gamma", None) or getattr(cfg, "vertex_steps", None)) and (
        getattr(cfg, "value_optimizer", None) is not None or getattr(cfg, "compile", False)
    ):
        raise ConfigError(
            f"{name}: vertex_gamma/vertex_steps act on the eager loop's plain steps; drop "
            f"value_optimizer= and compile= with them."
        )
    if not (isinstance(cfg.output_precision, (int, float)) and cfg.output_precision > 0):
        raise ConfigError(f"{name}: output_precision must be > 0, got {cfg.output_precision!r}.")
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"{name}: output must be one of {OUTPUTS}, got {cfg.output!r}.")
    init = getattr(cfg, "init", "forward")
    if not (callable(init) or init in INITS):
        raise ConfigError(
            f"{name}: init must be one of {INITS} or a callable (vertex_name, value) -> tensor, "
            f"got {init!r}."
        )
    beta = getattr(cfg, "beta", None)
    if beta is not None:
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ConfigError(f"{name}: beta must be a number > 0 (or None), got {beta!r}.")
        if cfg.output_precision != 1.0:
            raise ConfigError(
                f"{name}: beta= is the loss term's weight under nudging; give beta or "
                f"output_precision, not both."
            )
    if getattr(cfg, "nudging", "positive") not in NUDGINGS:
        raise ConfigError(f"{name}: nudging must be one of {NUDGINGS}, got {cfg.nudging!r}.")
    tol = getattr(cfg, "tol", None)
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ConfigError(f"{name}: tol must be a number >= 0 (or None), got {tol!r}.")
    for k, v in dict(cfg.precision).items():
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{name}: precision[{k!r}] must be a number > 0, got {v!r}.")
    for k, fn in dict(cfg.energies).items():
        if not callable(fn):
            raise ConfigError(f"{name}: energies[{k!r}] must be callable (x, mu) -> energy.")
    if not isinstance(getattr(cfg, "compile", False), (bool, str)):
        raise ConfigError(f"{name}: compile must be True/False or a torch.compile backend name.")
    for opt in ("value_optimizer", "error_optimizer"):
        if getattr(cfg, opt, None) is not None and not callable(getattr(cfg, opt)):
            raise ConfigError(
                f"{name}: {opt} must be a callable params -> torch.optim.Optimizer, e.g. "
                f"lambda xs: torch.optim.Adam(xs, lr=0.1)."
            )


def compiled(
    plan, ff, target, loss_fn, setup: Setup, trace, mode: str, *, backend, lr=0.0, noise=None
) -> Grads:
    """The rule's loop through :func:`pccompile.engine.compiled.run_compiled`."""
    from ..engine.compiled import run_compiled  # imports torch.compile's machinery lazily

    if trace is not None and trace.per_vertex:
        raise ConfigError("compile=True records the energy per step, not a per-vertex trace.")
    backend = "inductor" if backend is True else backend
    new, energy, loop, unreached = run_compiled(
        plan, ff, target, loss_fn, setup, mode=mode, lr=lr, backend=backend, noise=noise
    )
    grads = Grads()
    if mode in ("il", "epc", "mcpc"):
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


def check_step_size(gamma: Any, what: str) -> None:
    """A step size is a number > 0. Above 1 it is allowed (a well-conditioned energy takes it)
    and warned about: with unit-precision squared errors a step above 1 overshoots a vertex's
    own error."""
    if not (isinstance(gamma, (int, float)) and float(gamma) > 0.0):
        raise ConfigError(f"{what} must be a number > 0, got {gamma!r}.")
    if gamma > 1.0:
        warnings.warn(
            f"{what}={gamma} is above 1: a step overshoots a unit-precision vertex's own error "
            f"(dF/dx_v = eps_v + ...), so inference may oscillate or diverge; learn warns if the "
            f"energy rises.",
            LargeStepWarning,
            stacklevel=5,
        )


def phases(cfg: Any) -> list[tuple[float, float]]:
    """The inference runs a config asks for: ``(w, weight)`` per run, ``w`` the loss term's
    weight in the energy (the gradient is divided by it) and ``weight`` the run's share of the
    written gradient. One run, except centred nudging's ``+beta`` and ``-beta``."""
    beta = getattr(cfg, "beta", None)
    if beta is None:
        return [(float(cfg.output_precision), 1.0)]
    b = float(beta)
    return {
        "positive": [(b, 1.0)],
        "negative": [(-b, 1.0)],
        "centered": [(b, 0.5), (-b, 0.5)],
    }[cfg.nudging]


def initial_values(plan: Plan, ff, init: Any) -> dict[int, list[torch.Tensor]] | None:
    """Where the value nodes start under ``init`` (None: the feed-forward pass)."""
    if init == "forward":
        return None
    out = {}
    for v in plan.vertices:
        if v.kind == "output":
            continue
        ref = ff.flat[v.vid]
        if init == "zeros":
            out[v.vid] = [torch.zeros_like(t) for t in ref]
        elif init == "normal":
            out[v.vid] = [torch.randn_like(t) for t in ref]
        else:
            made = [init(v.name, t.detach()) for t in ref]
            for t, m in zip(ref, made):
                if not (isinstance(m, torch.Tensor) and m.shape == t.shape):
                    raise ConfigError(
                        f"init({v.name!r}, value) must return a tensor of shape "
                        f"{tuple(t.shape)}, got {type(m).__name__}."
                    )
            out[v.vid] = [m.detach().to(t.dtype) for t, m in zip(ref, made)]
    return out


def merge(parts: list[tuple[Grads, float]]) -> Grads:
    """The weighted sum of several runs' gradients (centred nudging)."""
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    out = Grads()
    for g, weight in parts:
        for p, t in g.params.items():
            out.add_param(p, t, weight)
        for slot, t in g.leaves.items():
            out.add_leaf(slot, t, weight)
    out.run = parts[0][0].run
    return out


def setup_of(
    cfg: Any,
    steps: int,
    clamp: Mapping | None = None,
    free_inputs: tuple[int, ...] = (),
    w: float | None = None,
) -> Setup:
    """The inference :class:`Setup` of an approximate rule's config, for ``steps`` steps
    (``w``: the loss term's weight, default the config's ``output_precision``)."""
    return Setup(
        gamma=cfg.gamma,
        steps=steps,
        output=cfg.output,
        output_precision=float(cfg.output_precision) if w is None else float(w),
        precision=dict(cfg.precision),
        energies=dict(cfg.energies),
        clamp=dict(clamp or {}),
        free_inputs=tuple(free_inputs),
        value_optimizer=getattr(cfg, "value_optimizer", None),
        tol=getattr(cfg, "tol", None),
        vertex_gamma=dict(getattr(cfg, "vertex_gamma", {})),
        vertex_steps=dict(getattr(cfg, "vertex_steps", {})),
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

    def run(
        self,
        plan,
        ff,
        cfg: Any,
        schedule: Schedule,
        target,
        loss_fn,
        trace,
        clamp=None,
        free_inputs=(),
    ):
        """Each of the config's :func:`phases` (one, or centred nudging's two) from the same
        start, their gradients combined."""
        parts = []
        for k, (w, weight) in enumerate(phases(cfg)):
            setup = setup_of(cfg, schedule.steps, clamp, free_inputs, w=w)
            grads = self.run_phase(plan, ff, cfg, setup, target, loss_fn, trace if k == 0 else None)
            parts.append((grads, weight))
        return merge(parts)

    def run_phase(self, plan, ff, cfg: Any, setup: Setup, target, loss_fn, trace) -> Grads:
        """One inference run on ``setup`` and the parameter gradients it gives."""
        if cfg.compile:
            if cfg.init != "forward" or setup.tol is not None:
                raise ConfigError(
                    "compile=True starts at the feed-forward pass and runs every step: use "
                    "init='forward' and tol=None, or compile=False."
                )
            return compiled(plan, ff, target, loss_fn, setup, trace, "il", backend=cfg.compile)
        return self.eager_phase(plan, ff, cfg, setup, target, loss_fn, trace)

    def eager_phase(
        self, plan, ff, cfg: Any, setup: Setup, target, loss_fn, trace, noise=None
    ) -> Grads:
        """The eager loop of one phase: inference from ``cfg.init``, the weights read at the
        last step (``noise``: MCPC's Langevin term, added to every value step)."""
        out: list[Grads] = []
        steps = setup.steps
        run = run_inference(
            plan,
            ff,
            target,
            loss_fn,
            setup,
            params_at=lambda s: s == steps,
            on_params=lambda s, g: out.append(g),
            trace=trace,
            x0=initial_values(plan, ff, cfg.init),
            noise=noise,
        )
        grads = out[0] if out else Grads()
        grads.run = run
        return grads
