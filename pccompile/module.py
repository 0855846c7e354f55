"""PCModule: the emitted module. Forward equals the original; ``learn`` runs PC inference.

Reads: the user's module (shared, not copied) and a plan builder from :mod:`pccompile.api`.
Writes: ``p.grad`` of the shared parameters in ``learn`` (accumulated like ``backward()``).
Invariants: the PCModule is a view of the original's root: it holds the original's own
``_parameters``, ``_buffers`` and ``_modules`` dicts (not copies), so ``state_dict()`` has
exactly the original's keys and tensors, a head replaced or a buffer reassigned on either is
seen by both, and ``.to()``/``.double()`` move the original's tensors; ``training`` is the
original's flag. A plan is used only while the model is in the state it was captured for
(:mod:`pccompile.guards`): a change after ``convert`` is captured again, or refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import networkx as nx
import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from .checks import check_inputs, check_target
from .engine import Plan, feed_forward
from .engine.inference import ON_STEP, Inference, run_inference
from .errors import (
    ConfigError,
    DivergenceWarning,
    ExactnessError,
    InputError,
    NumericallyUnreachedWarning,
    PCCompileError,
    UnreachedWarning,
)
from .extras import require
from .frontend.annotate import complete_inputs
from .graph import pc_graph
from .guards import PlanCache
from .rules import LearnReport, RuleConfig, Trace, make_rule, rule_of
from .rules.bp import detach
from .rules.il import setup_of
from .rules.report import DESCENT_RULES, divergence_message, first_rise, silent_message

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
        d = self.__dict__
        # the original's own registries, shared: whatever either side registers, both see
        for registry in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            d[registry] = model.__dict__[registry]
        d["_pc_model"], d["_pc_rule"], d["_pc_loss_fn"] = model, rule, loss_fn
        d["_pc_builder"], d["_pc_options"] = builder, options
        d["_pc_plans"] = _plan_cache(model, builder)
        d["_pc_example"] = tuple(
            t.detach() if isinstance(t, torch.Tensor) else t for t in example_inputs
        )
        self._plan(self._pc_example)

    @property
    def training(self) -> bool:  # type: ignore[override]
        """The original's training flag (``model.eval()`` on the original is seen here)."""
        model = self.__dict__.get("_pc_model")
        return True if model is None else model.training

    @training.setter
    def training(self, mode: bool) -> None:
        model = self.__dict__.get("_pc_model")
        if model is not None:  # nn.Module.__init__ sets it before the model is attached
            model.training = mode

    # ------------------------------------------------------------------ introspection
    @property
    def original(self) -> nn.Module:
        """The user's module (shares every parameter with this PCModule)."""
        return self._pc_model

    @property
    def rule(self) -> RuleConfig:
        return self._pc_rule

    @property
    def capture_options(self) -> Any:
        """How the model was captured (:class:`pccompile.CaptureOptions`)."""
        return self._pc_options

    @property
    def example_inputs(self) -> tuple:
        """The (detached) example inputs given to ``convert``."""
        return self._pc_example

    @property
    def graph(self) -> nx.DiGraph:
        """The PC graph for the current training mode (vertices with ``kind``, ``level``...), a
        networkx view of the levelled FX graph (``self.plan.gm``)."""
        return pc_graph(self._plan().gm)

    @property
    def plan(self) -> Plan:
        return self._plan()

    @property
    def recaptures(self) -> int:
        """Captures made since ``convert`` because the model changed (a guard failed)."""
        return self._pc_plans.recaptures

    @property
    def code(self) -> str:
        """Python source of the traced forward (for reading)."""
        return self._plan().gm.code

    def _plan(self, inputs: tuple | None = None) -> Plan:
        """The plan for the model as it is now (its guards checked; captured again if none of
        the cached plans' guards hold), traced from ``inputs`` when a capture is needed."""
        return self._pc_plans.get(self._example_on_device() if inputs is None else inputs)

    def _example_on_device(self) -> tuple:
        dev = self._device()
        return tuple(
            t.to(dev) if isinstance(t, torch.Tensor) and dev is not None else t
            for t in self._pc_example
        )

    def _device(self) -> torch.device | None:
        p = next(self._pc_model.parameters(), None)
        return p.device if p is not None else None

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> Any:
        # DistributedDataParallel(pcm) reads this attribute while it is constructed: refuse
        # there, rather than let its backward hooks (which learn never fires) drift the ranks.
        raise ConfigError(
            "DistributedDataParallel(pcm) cannot synchronise PC learning: learn() writes p.grad "
            "without backward(), so DDP's all-reduce hooks never fire and the ranks would drift "
            "apart. Use pccompile.distributed.DataParallel(pcm) instead (docs/train.md)."
        )

    # Plans hold compiled closures; they are rebuilt on demand after copying or unpickling.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_pc_plans"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["_pc_plans"] = _plan_cache(self._pc_model, self._pc_builder)

    def train(self, mode: bool = True) -> PCModule:
        """``train()``/``eval()`` of the original itself, so an override runs (one that keeps a
        BatchNorm in eval, say); the plan for the flags it leaves is found or captured at the
        next forward or learn."""
        self._pc_model.train(mode)
        return self

    def _apply(self, fn: Callable, recurse: bool = True) -> PCModule:
        """``.to()``, ``.double()``, ``.cuda()``...: applied to the original (its root tensors
        are this module's, so none is orphaned) and to the example inputs. The plans hold the
        old tensors and are dropped; the next forward or learn captures the model as it is."""
        self._pc_model._apply(fn, recurse)
        with torch.no_grad():
            self.__dict__["_pc_example"] = tuple(
                fn(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in self._pc_example
            )
        self._pc_plans.clear()
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self._pc_model
        if model._forward_pre_hooks or model._forward_hooks:
            return _with_root_hooks(model, self._plan(args).gm, args, kwargs)
        return self._plan(args).gm(*args, **kwargs)

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        *inputs: Any,
        target: Any,
        loss_fn: Callable | None = None,
        rule: str | RuleConfig | None = None,
        trace: bool | str = False,
        require_exact: bool = False,
        clamp: dict[str, Any] | None = None,
        free_inputs: tuple[int, ...] = (),
        progress: bool = False,
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
            clamp: vertex name -> value to hold that vertex's value node at during inference
                (partial clamping; the approximate rules only).
            free_inputs: positions of model inputs that become free value nodes during
                inference (unsupervised / generative training; the approximate rules only).
            progress: show a tqdm bar over the inference steps of a long eager inference
                (the approximate rules; needs the ``progress`` extra).
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
        pc_rule = rule_of(cfg)
        if require_exact and (problems := pc_rule.exactness_problems(self.plan, cfg)):
            raise ExactnessError(
                f"require_exact=True but this setting cannot equal BP: {'; '.join(problems)}."
            )
        if pc_rule.autograd:  # bp, the reference: the original module and loss.backward()
            check_inputs(inputs, len(inputs), self._device(), clamped=False)
            # the same arguments the graph was traced with (concrete_args fixed at conversion)
            fixed = getattr(self._pc_options, "concrete_args", None) or {}
            return pc_rule.backward(self._pc_model, inputs, target, _checked(loss_fn), fixed)
        model = self._pc_model
        hooked = None
        if model._forward_pre_hooks or model._forward_hooks:  # around the graph, as in forward
            inputs, loss_fn, hooked = _root_hooks_in_learn(model, inputs, loss_fn)
        plan = self._plan(inputs)
        if not (plan.plain_inputs and len(inputs) == plan.n_inputs):  # else nothing to complete
            inputs = complete_inputs(plan.gm, inputs)
        check_inputs(inputs, plan.n_inputs, self._device())
        schedule = pc_rule.schedule(plan, cfg, bool(trace))
        ff = feed_forward(
            plan, inputs, target, _checked(loss_fn), record_state=schedule.records_state
        )
        ff.root = self._pc_model
        tr = None
        if trace or schedule.mode == "faithful":  # faithful schedules report the energy per step
            tr = Trace(keep_errors=trace == "errors", per_vertex=bool(trace), rule=cfg.name)
        if clamp and not pc_rule.approximate:
            raise ConfigError(
                f"clamp= holds value nodes fixed during approximate inference (rules 'il', "
                f"'ipc'); rule {cfg.name!r} computes BP's gradient and has nothing to clamp."
            )
        if free_inputs and not pc_rule.approximate:
            raise ConfigError(f"free_inputs= needs an approximate rule, not {cfg.name!r}.")
        extra = {"clamp": clamp, "free_inputs": tuple(free_inputs)} if pc_rule.approximate else {}
        with _progress_bar(cfg.name, progress):
            grads = pc_rule.run(plan, ff, cfg, schedule, target, loss_fn, tr, **extra)
        grads.finish(plan, ff)
        grads.write(plan)
        run = grads.run
        unreached = list(run.unreached) if run is not None else grads.unreached
        if unreached:
            layers = plan.gm.meta.get("pc_granularity") == "layer"
            hint = "" if layers else " or convert with granularity='layer'"
            warnings.warn(
                f"{cfg.name}: with steps={schedule.steps} the error never reaches "
                f"{_few(unreached)}, so their parameters get a zero gradient. Raise steps (the "
                f"error travels one vertex per step){hint}.",
                UnreachedWarning,
                stacklevel=2,
            )
        energy = None if tr is None else tr.energy
        if run is not None:
            energy = run.energy
            if tr is not None:
                tr.energy[:] = run.energy
        said, silent, rise = [], list(getattr(run, "silent", []) or []), None
        if silent:
            dtype = next((p.dtype for p in plan.live_params), torch.float32)
            names = {id(p): n for n, p in self.named_parameters()}
            held = [names[id(p)] for v in plan.vertices if v.name in silent for p in v.params]
            said.append(silent_message(cfg.name, silent, dtype, [n for n in held if n]))
            warnings.warn(said[-1], NumericallyUnreachedWarning, stacklevel=2)
        # a rise means divergence under plain gradient steps on squared errors (another energy's
        # term enters the log with its own offset when the error front reaches its vertex)
        plain = getattr(cfg, "value_optimizer", None) is None and not getattr(cfg, "energies", {})
        plain = plain and getattr(cfg, "lr", 0) == 0 and getattr(cfg, "optimizer", None) is None
        if run is not None and cfg.name in DESCENT_RULES and plain:
            dtype = next((p.dtype for p in plan.live_params), torch.float32)
            rise = first_rise(energy, 1e-9 if dtype == torch.float64 else 1e-3)
            # a non-finite energy has its own warning below (which also says: lower gamma)
            if rise is not None and all(math.isfinite(e) for e in energy):
                said.append(divergence_message(cfg.name, rise, energy, cfg.gamma))
                warnings.warn(said[-1], DivergenceWarning, stacklevel=2)
        if energy is not None and not all(math.isfinite(e) for e in energy):
            warnings.warn(
                "The energy became non-finite during inference (the value nodes diverged). Under "
                "Z-IL this happens only behind the error front, after those vertices' weights "
                "were read, so the parameter updates are unaffected; under IL/iPC, lower gamma.",
                RuntimeWarning,
                stacklevel=2,
            )
        return LearnReport(
            cfg.name,
            schedule.mode,
            float(ff.loss.detach()),
            schedule.steps if getattr(run, "steps", None) is None else run.steps,
            energy,
            tr if trace else None,
            _output_of(ff.output if hooked is None or hooked[0] is None else hooked[0]),
            unreached,
            0.0 if run is None else run.compile_seconds,
            self._pc_plans.recaptures,
            silent,
            rise,
            said,
        )

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        *inputs: Any,
        target: Any = None,
        loss_fn: Callable | None = None,
        clamp: dict[str, Any] | None = None,
        free_inputs: tuple[int, ...] = (),
        steps: int = 20,
        gamma: float = 0.1,
        output: str = "clamp",
        output_precision: float = 1.0,
        precision: dict[str, float] | None = None,
        energies: dict[str, Callable] | None = None,
        value_optimizer: Callable | None = None,
    ) -> Inference:
        """PC inference without learning: minimise the energy over the free value nodes and
        return them. Nothing is written to ``p.grad``.

        The value nodes start at the feed-forward pass of ``inputs``. With ``target`` the output
        is clamped to it (its energy ``B * loss_fn``); ``clamp`` holds any vertex at a given
        value; ``free_inputs`` makes model inputs free value nodes that start where ``inputs``
        puts them: given a class at the output, inference then generates an input
        (generative inference). Without ``target`` or ``clamp`` the feed-forward pass is
        already the energy's minimum (test-time inference is the forward pass).

        Args:
            *inputs: the model's inputs (the starting point of free ones).
            target, loss_fn: the output's clamp and its energy (default: convert's loss_fn).
            clamp: vertex name -> value held fixed (``pcm.plan.vertices`` lists the names).
            free_inputs: positions of inputs to infer.
            steps, gamma: inference steps and step size (plain steps ``x -= gamma dF/dx``).
            output, output_precision, precision, energies: as in :class:`pccompile.IL`.
            value_optimizer: ``params -> torch.optim.Optimizer`` over the value nodes.

        Returns:
            An :class:`~pccompile.Inference`: ``values`` (vertex name -> tensors), ``inputs``,
            ``energy`` per step, ``output``.
        """
        cfg = make_rule(
            "il",
            gamma=gamma,
            steps=steps,
            output=output,
            output_precision=output_precision,
            precision=precision or {},
            energies=energies or {},
            value_optimizer=value_optimizer,
        )
        loss_fn = self._pc_loss_fn if loss_fn is None else loss_fn
        if target is not None and loss_fn is None:
            raise ConfigError("infer(target=...) needs loss_fn=..., or convert(..., loss_fn=...).")
        plan = self._plan(inputs)
        inputs = complete_inputs(plan.gm, inputs)
        check_inputs(inputs, plan.n_inputs, self._device())
        ff_loss = _no_loss if target is None else _checked(loss_fn)
        ff = feed_forward(plan, inputs, target, ff_loss, record_state=True)
        setup = setup_of(cfg, steps, clamp, free_inputs)
        return run_inference(plan, ff, target, None if target is None else loss_fn, setup)


@contextlib.contextmanager
def _progress_bar(rule: str, on: bool) -> Iterator[None]:
    """``learn(progress=True)``: a tqdm bar advanced by the inference loop's :data:`ON_STEP`
    hook (one bar per inference phase: centred nudging runs two)."""
    if not on:
        yield
        return
    require("progress", "learn(progress=True)")
    from tqdm.auto import tqdm

    bars: list = []

    def on_step(s: int, steps: int) -> None:
        if s == 0:
            bars.append(tqdm(total=steps + 1, desc=f"{rule} inference", unit="step", leave=False))
        bars[-1].update(1)

    token = ON_STEP.set(on_step)
    try:
        yield
    finally:
        ON_STEP.reset(token)
        for bar in bars:
            bar.close()


def _no_loss(output: Any, target: Any) -> torch.Tensor:
    return torch.zeros(())


def _few(names: list[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return f"{len(names)} vertices ({shown}{', ...' if len(names) > k else ''})"


def _run_pre_hooks(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The root's forward pre-hooks, as ``nn.Module.__call__`` runs them: each may replace the
    positional arguments (and, registered ``with_kwargs``, the keyword arguments)."""
    for hook_id, hook in list(model._forward_pre_hooks.items()):
        if hook_id in model._forward_pre_hooks_with_kwargs:
            res = hook(model, args, kwargs)
            if res is not None:
                args, kwargs = res
        else:
            res = hook(model, args)
            if res is not None:
                args = res if isinstance(res, tuple) else (res,)
    return args, kwargs


def _with_root_hooks(model: nn.Module, gm: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``gm`` as ``model(*args, **kwargs)`` would run ``model.forward``: the forward
    pre-hooks and hooks registered on the original's root fire (the traced graph calls the
    children, whose hooks fire on their own, but never the root), with the same arguments and
    the same power to replace inputs or the output as in ``nn.Module.__call__``."""
    args, kwargs = _run_pre_hooks(model, args, kwargs)
    result = gm(*args, **kwargs)
    for hook_id, hook in list(model._forward_hooks.items()):
        if hook_id in model._forward_hooks_with_kwargs:
            res = hook(model, args, kwargs, result)
        else:
            res = hook(model, args, result)
        if res is not None:
            result = res
    return result


def _plan_cache(model: nn.Module, builder: Callable) -> PlanCache:
    """The plans of a PCModule: captures of ``model`` with every submodule's training flag as
    the model has it (``training=None``), one per state its guards tell apart."""
    return PlanCache(model, lambda inputs: builder(model, inputs, None))


def _root_hooks_in_learn(
    model: nn.Module, inputs: tuple, loss_fn: Callable
) -> tuple[tuple, Callable, list]:
    """The root's hooks in ``learn``: the forward pre-hooks change the inputs before the graph
    runs; the forward hooks act on the graph's output, so they are part of the loss (the
    output vertex's energy is ``loss_fn(hooks(output), target)``, differentiated by autograd).
    Returns the inputs, that loss, and a cell holding the hooked output of its first call (the
    feed-forward pass; IL and iPC evaluate the loss again on inferred values)."""
    args, kwargs = _run_pre_hooks(model, inputs, {})
    if kwargs:
        raise InputError(
            f"A forward pre-hook on {type(model).__name__} returns keyword arguments, which "
            f"learn() cannot pass to the graph (it takes the inputs positionally)."
        )
    hooked: list = [None]
    if not model._forward_hooks:
        return tuple(args), loss_fn, hooked

    def hooked_loss(output: Any, target: Any) -> torch.Tensor:
        for hook_id, hook in list(model._forward_hooks.items()):
            if hook_id in model._forward_hooks_with_kwargs:
                res = hook(model, args, {}, output)
            else:
                res = hook(model, args, output)
            if res is not None:
                output = res
        if hooked[0] is None:  # the feed-forward pass's (later calls see inferred values)
            hooked[0] = output
        return loss_fn(output, target)

    hooked_loss.__wrapped__ = loss_fn
    return tuple(args), hooked_loss, hooked


def _output_of(output: Any) -> Any:
    return output.detach() if type(output) is torch.Tensor else tree_map(detach, output)


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
