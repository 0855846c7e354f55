"""PCModule: the emitted module. Forward equals the original; ``learn`` runs PC inference.

Reads: the user's module (shared, not copied) and a plan builder from :mod:`pccompile.api`.
Writes: ``p.grad`` of the shared parameters in ``learn`` (accumulated like ``backward()``).
Invariants: ``state_dict()`` has exactly the original's keys and tensors (the original's
children, parameters and buffers are registered under their own names); a plan is built once per
training mode, because tracing bakes ``self.training`` branches into the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import networkx as nx
import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from .annotate import complete_inputs
from .checks import check_inputs, check_target, scalar_loss
from .config import BP, FPA, ZIL, RuleConfig, make_rule
from .engine import FeedForward, Plan, feed_forward
from .errors import ConfigError, ExactnessError, InputError, PCCompileError
from .rules import LearnReport, Trace

__all__ = ["PCModule"]

log = logging.getLogger(__name__)


class PCModule(nn.Module):
    """A model converted by :func:`pccompile.convert`.

    ``pcm(*inputs)`` returns what the original returns. ``pcm.learn(*inputs, target=y,
    loss_fn=f)`` runs the configured rule's PC inference on the batch and accumulates
    ``+dL/dtheta`` into ``p.grad`` of every trainable parameter the graph uses, so any
    ``torch.optim`` optimizer applies it. ``pcm.graph`` is the (leveled) PC graph.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple,
        rule: RuleConfig,
        loss_fn: Callable | None,
        builder: Callable,
        options: Any,
    ):
        super().__init__()
        clash = [n for n in _names(model) if hasattr(PCModule, n)]
        if clash:
            raise ConfigError(
                f"The model has submodules/parameters named {clash}, which clash with PCModule's "
                f"own attributes; rename them before converting."
            )
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
        for name, child in model.named_children():
            self.add_module(name, child)
        self.training = model.training
        d = self.__dict__
        d["_pc_model"], d["_pc_rule"], d["_pc_loss_fn"] = model, rule, loss_fn
        d["_pc_builder"], d["_pc_options"], d["_pc_plans"] = builder, options, {}
        d["_pc_example"] = tuple(
            t.detach() if isinstance(t, torch.Tensor) else t for t in example_inputs
        )
        self._plan(self.training, self._pc_example)

    # ------------------------------------------------------------------ introspection
    @property
    def original(self) -> nn.Module:
        """The user's module (shares every parameter with this PCModule)."""
        return self._pc_model

    @property
    def rule(self) -> RuleConfig:
        return self._pc_rule

    @property
    def graph(self) -> nx.DiGraph:
        """The PC graph for the current training mode (vertices with ``kind``, ``level``...)."""
        return self._plan(self.training).graph

    @property
    def plan(self) -> Plan:
        return self._plan(self.training)

    @property
    def code(self) -> str:
        """Python source of the traced forward (for reading)."""
        return self._plan(self.training).gm.code

    def _plan(self, training: bool, inputs: tuple | None = None) -> Plan:
        plan = self._pc_plans.get(training)
        if plan is None:
            if inputs is None:
                inputs = self._example_on_device()
            plan = self._pc_builder(self._pc_model, inputs, training)
            self._pc_plans[training] = plan
        return plan

    def _example_on_device(self) -> tuple:
        dev = self._device()
        return tuple(
            t.to(dev) if isinstance(t, torch.Tensor) and dev is not None else t
            for t in self._pc_example
        )

    def _device(self) -> torch.device | None:
        p = next(self._pc_model.parameters(), None)
        return p.device if p is not None else None

    # Plans hold compiled closures; they are rebuilt on demand after copying or unpickling.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pc_plans"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def train(self, mode: bool = True) -> PCModule:
        super().train(mode)
        self._pc_model.training = mode
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._plan(self.training, args).gm(*args, **kwargs)

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        *inputs: Any,
        target: Any,
        loss_fn: Callable | None = None,
        rule: str | RuleConfig | None = None,
        trace: bool | str = False,
        require_exact: bool = False,
        **options: Any,
    ) -> LearnReport:
        """Run one PC learning step on a batch and accumulate ``+dL/dtheta`` into ``p.grad``.

        Args:
            *inputs: the model's inputs, positionally.
            target: the target passed to ``loss_fn``.
            loss_fn: ``loss_fn(output, target) -> scalar``; defaults to convert's ``loss_fn``.
            rule: override the converted rule for this step (name or config).
            trace: record per-step energies and error norms per vertex (runs the faithful
                schedule); ``"errors"`` also keeps the error tensors themselves.
            require_exact: raise :class:`ExactnessError` if the rule's setting cannot equal BP.
            **options: rule options for this step (``gamma=``, ``steps=`` ...).

        Returns:
            A :class:`LearnReport` (loss, steps, per-step energy where tracked, output).

        Raises:
            InputError: wrong inputs or target (raised before any inference runs).
            ExactnessError: ``require_exact=True`` with a non-exact setting.
        """
        cfg = make_rule(self._pc_rule if rule is None else rule, **options)
        loss_fn = self._pc_loss_fn if loss_fn is None else loss_fn
        if loss_fn is None:
            raise ConfigError("learn() needs loss_fn=..., or convert(..., loss_fn=...).")
        if require_exact:
            _check_exact(self, cfg)
        if isinstance(cfg, BP):
            return self._learn_bp(inputs, target, loss_fn)
        plan = self._plan(self.training, inputs)
        inputs = complete_inputs(plan.gm, inputs)
        check_inputs(inputs, plan.n_inputs, self._device())
        mode, steps = _mode_and_steps(plan, cfg, trace)
        recompute_faithful = mode == "faithful" and not isinstance(cfg, FPA)
        ff = feed_forward(plan, inputs, target, _checked(loss_fn), record_state=recompute_faithful)
        tr = None
        if trace or mode == "faithful":  # faithful schedules always report the energy per step
            tr = Trace(keep_errors=trace == "errors", per_vertex=bool(trace))
        grads = _run_rule(plan, ff, cfg, mode, steps, target, loss_fn, tr)
        grads.finish(plan, ff)
        grads.write(plan)
        return LearnReport(
            cfg.name,
            mode,
            float(ff.loss.detach()),
            steps,
            None if tr is None else tr.energy,
            tr if trace else None,
            tree_map(_detach, ff.output),
        )

    def _learn_bp(self, inputs: tuple, target: Any, loss_fn: Callable) -> LearnReport:
        check_inputs(inputs, len(inputs), self._device(), clamped=False)
        # the same arguments the graph was traced with (concrete_args fixed at conversion)
        out = self._pc_model(*inputs, **(getattr(self._pc_options, "concrete_args", None) or {}))
        loss = scalar_loss(_checked(loss_fn)(out, target))
        if loss.requires_grad:  # a model without trainable parameters has nothing to learn
            loss.backward()
        return LearnReport("bp", "autograd", float(loss.detach()), 0, output=tree_map(_detach, out))


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _names(model: nn.Module) -> list[str]:
    return (
        [n for n, _ in model.named_children()]
        + [n for n, _ in model.named_parameters(recurse=False)]
        + [n for n, _ in model.named_buffers(recurse=False)]
    )


def _checked(loss_fn: Callable) -> Callable:
    def wrapped(output: Any, target: Any) -> torch.Tensor:
        check_target(output, target, loss_fn)
        try:
            return loss_fn(output, target)
        except PCCompileError:
            raise
        except Exception as exc:
            shapes = tree_map(
                lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t, output
            )
            tshape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target)
            raise InputError(
                f"loss_fn(output, target) failed before inference: {type(exc).__name__}: {exc} "
                f"(output {shapes}, target {tshape}). Check the target's shape and dtype."
            ) from exc

    wrapped.__wrapped__ = loss_fn
    return wrapped


def _mode_and_steps(plan: Plan, cfg: RuleConfig, trace: bool) -> tuple[str, int]:
    from .rules import fpa, zil

    if isinstance(cfg, ZIL):
        return zil.mode_for(plan, cfg, trace), zil.steps_for(plan, cfg)
    if isinstance(cfg, FPA):
        return fpa.mode_for(plan, cfg, trace), fpa.steps_for(plan, cfg)
    from .rules.approx import default_steps

    return "faithful", cfg.steps if cfg.steps is not None else default_steps(plan)


def _run_rule(
    plan: Plan,
    ff: FeedForward,
    cfg: RuleConfig,
    mode: str,
    steps: int,
    target: Any,
    loss_fn: Callable,
    trace: Trace | None,
):
    from .rules import approx, fpa, zil  # noqa: F401  (rule modules are the schedules)
    from .rules.sync import run_sync

    if isinstance(cfg, ZIL):
        if mode == "efficient":
            return zil.propagate(plan, ff, gamma=cfg.gamma, last_level=steps - 1)
        by_level = plan.by_level
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=max(steps - 1, 0),
            gamma=cfg.gamma,
            weights_at=lambda s: set(by_level[s]) if s < len(by_level) else None,
            recompute=True,
            trace=trace,
        )
    if isinstance(cfg, FPA):
        if mode == "efficient":
            return zil.propagate(plan, ff, gamma=1.0, last_level=plan.depth)
        everyone = {v.vid for v in plan.hidden}
        return run_sync(
            plan,
            ff,
            target,
            loss_fn,
            n_updates=steps,
            gamma=cfg.gamma,
            weights_at=lambda s: everyone if s == steps else None,
            recompute=False,
            trace=trace,
        )
    return approx.run(plan, ff, cfg, steps, target, loss_fn, trace)


def _check_exact(pcm: PCModule, cfg: RuleConfig) -> None:
    plan = pcm.plan
    if isinstance(cfg, BP):
        return
    if isinstance(cfg, ZIL):
        problems = []
        if cfg.gamma != 1.0:
            problems.append(f"gamma={cfg.gamma} (must be 1)")
        if cfg.steps is not None and cfg.steps < plan.depth + 1:
            problems.append(f"steps={cfg.steps} < depth+1={plan.depth + 1}")
        if not plan.leveled:
            problems.append("the graph is not leveled (convert with level=True)")
    elif isinstance(cfg, FPA):
        problems = []
        if cfg.gamma != 1.0 and cfg.steps is not None:
            problems.append(f"gamma={cfg.gamma} with a finite number of steps")
        if cfg.steps is not None and cfg.steps < plan.depth:
            problems.append(f"steps={cfg.steps} < depth={plan.depth}")
        if cfg.gamma != 1.0 and cfg.steps is None:
            problems.append(f"gamma={cfg.gamma} (must be 1)")
    else:
        problems = [f"rule {cfg.name!r} approximates BP"]
    if problems:
        raise ExactnessError(
            f"require_exact=True but this setting cannot equal BP: {'; '.join(problems)}."
        )
