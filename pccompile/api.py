"""``convert``: the whole pipeline, in order.

nn.Module --capture--> fx.GraphModule (in-place ops functionalized)
          --unroll--> one vertex per RNN time step
          --annotate--> roles and rules per node  --check_trace--> same output as eager
          --group_layers--> one vertex per layer (granularity="layer")
          --level_graph--> levels per vertex, identity vertices inserted as FX nodes
          --compile_plan--> Plan (the schedule) --> PCModule

Every stage reads and writes the one ``fx.GraphModule``; ``PCModule.graph`` is a networkx view
of its final state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from .engine import Plan, compile_plan
from .errors import ConfigError, InputError, TraceError, UnsupportedOpError
from .frontend.annotate import TracedRunError, annotate, check_trace
from .frontend.capture import capture
from .frontend.export import capture_export, without_generation_cache
from .frontend.export import unflatten_output as _unflatten
from .frontend.layers import Granularity, check_granularity, group_layers
from .frontend.level import level_graph, set_levels
from .frontend.names import name_vertices
from .frontend.unroll import unroll_recurrent
from .module import PCModule
from .rules import RuleConfig, make_rule, rule_of

__all__ = ["convert", "unconvert", "CaptureOptions"]


@dataclass(frozen=True)
class CaptureOptions:
    """How the model is captured and its PC graph built.

    Attributes:
        leaf_modules: module classes or qualified names kept as single opaque vertices.
        concrete_args: arguments fixed at trace time (``torch.fx`` ``concrete_args``).
        level: insert identity vertices on edges that skip levels (needed for exact Z-IL).
        capture: the front end. ``"fx"``: ``torch.fx`` symbolic tracing (module-level vertices,
            leaf modules, unrolled RNNs). ``"export"``: ``torch.export`` (ATen vertices; follows
            data-dependent sizes and any Python the model runs on tensors' metadata).
            ``"auto"``: fx, and export when fx cannot capture or annotate the model.
        granularity: ``"op"``: a value node per op. ``"layer"``: one per layer, a parametric op
            and the parameter-free ops after it (:mod:`pccompile.frontend.layers`).
    """

    leaf_modules: tuple[type | str, ...] = ()
    concrete_args: dict[str, Any] | None = None
    level: bool = True
    capture: Literal["auto", "fx", "export"] = "auto"
    granularity: Granularity = "op"

    def __post_init__(self) -> None:
        check_granularity(self.granularity)
        if self.capture not in ("auto", "fx", "export"):
            raise ConfigError(f"capture must be 'auto', 'fx' or 'export', got {self.capture!r}.")
        if self.capture == "export" and (self.leaf_modules or self.concrete_args):
            raise ConfigError(
                "leaf_modules and concrete_args are torch.fx options; torch.export captures "
                "every op as an ATen vertex. Use capture='fx' with them, or drop them."
            )


def build_plan(
    model: nn.Module, inputs: tuple, training: bool | None, *, opts: CaptureOptions
) -> Plan:
    """capture -> unroll -> annotate -> levelling -> compiled plan, for one training mode
    (``training=None``: every submodule's flag as the model has it, what PCModule captures)."""
    with without_generation_cache(model):  # a transformers Cache is no output of the graph
        gm = _annotated(model, inputs, training, opts)
    name_vertices(gm)  # before grouping: a layer is named after its parametric op
    if opts.granularity == "layer":
        group_layers(gm)
    if opts.level:
        level_graph(gm)
    else:
        set_levels(gm)
    if training is None:  # the plan's mode: training if any module of it is
        training = any(m.training for m in model.modules())
    return compile_plan(gm, training)


def _annotated(model: nn.Module, inputs: tuple, training: bool | None, opts: CaptureOptions):
    """The annotated graph from the front end ``opts.capture`` names (``auto``: fx, then
    export)."""
    if opts.capture == "export":
        gm = _annotated_export(model, inputs, training)
    else:
        try:
            gm = _annotated_fx(model, inputs, training, opts)
        except (TraceError, UnsupportedOpError, TracedRunError) as fx_error:
            if opts.capture == "fx" or opts.leaf_modules or opts.concrete_args:
                raise
            try:
                gm = _annotated_export(model, inputs, training)
            except (TraceError, UnsupportedOpError) as export_error:
                raise TraceError(
                    f"Neither front end can convert {type(model).__name__}.\n"
                    f"1. torch.fx: {fx_error}\n2. torch.export: {export_error}"
                ) from export_error
    return gm


def _annotated_fx(model: nn.Module, inputs: tuple, training: bool | None, opts: CaptureOptions):
    gm, user_leaves = capture(
        model, training=training, leaf_modules=opts.leaf_modules, concrete_args=opts.concrete_args
    )
    if opts.granularity == "op":  # a layer vertex keeps nn.RNN/LSTM/GRU whole: torch's fused kernel
        unroll_recurrent(gm, inputs, user_leaves)
    traced_out = annotate(gm, inputs, user_leaves)
    check_trace(model, inputs, traced_out, training, opts.concrete_args)
    return gm


def _annotated_export(model: nn.Module, inputs: tuple, training: bool | None):
    gm, _ = capture_export(model, inputs, training=training)
    traced_out = annotate(gm, inputs, set())
    check_trace(model, inputs, _unflatten(gm, traced_out), training, None)
    return gm


def convert(
    model: nn.Module,
    example_inputs: Any,
    rule: str | RuleConfig = "zil",
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
    level: bool | None = None,
    capture: Literal["auto", "fx", "export"] = "auto",
    granularity: Granularity | None = None,
    **rule_options: Any,
) -> PCModule:
    """Convert ``model`` into a PC-trainable :class:`PCModule`.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` or ``torch.export`` can capture.
        example_inputs: one input tensor or a tuple of inputs, used to type the graph's values.
        rule: ``"zil"`` (default), ``"fpa"``, ``"il"``, ``"ipc"``, ``"bp"``, or a config
            object such as ``pccompile.ZIL(gamma=1.0)``.
        loss_fn: default ``loss_fn(output, target) -> scalar`` for :meth:`PCModule.learn`.
        leaf_modules: module classes or qualified names to keep as one opaque vertex each.
        concrete_args: arguments fixed at trace time.
        level: run the levelling pass (identity vertices on skip edges). Required for exact Z-IL;
            default: the rule's choice (on for the exact rules, off for ``il``/``ipc``, whose
            networks in the literature have no identity vertices).
        capture: the front end: ``"auto"`` (torch.fx, then torch.export if fx cannot capture
            the model), ``"fx"`` or ``"export"`` (see :class:`CaptureOptions`).
        granularity: ``"op"`` (a value node per op) or ``"layer"`` (one per parametric op and
            the parameter-free ops after it, as PC research code draws a network). Default: the
            rule's choice, ``"layer"`` for ``il``/``ipc`` (the error front reaches a layer per
            inference step) and ``"op"`` for the exact rules (exact at either).
        **rule_options: fields of the rule's config (``gamma=``, ``steps=``, ``mode=`` ...).

    Returns:
        A ``PCModule`` sharing ``model``'s parameters: ``pcm(x) == model(x)``, and
        ``pcm.learn(x, target=y, loss_fn=f)`` writes ``p.grad`` by PC inference.

    Raises:
        TraceError: the model cannot be traced (the message names the line and the remedies).
        UnsupportedOpError: an op has no rule (the message names the node and the fix).
        ConfigError: bad rule or option. InputError: example inputs do not fit the model.

    Example:
        >>> import torch, pccompile
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> pcm = pccompile.convert(net, torch.randn(3, 4))
        >>> report = pcm.learn(torch.randn(3, 4), target=torch.randn(3, 2),
        ...                    loss_fn=torch.nn.functional.mse_loss)
    """
    if isinstance(model, PCModule):
        raise ConfigError(
            "This model is already a PCModule; use it as it is, or pccompile.unconvert(pcm) to "
            "get the plain module back before converting again."
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"convert() takes an nn.Module, got {type(model).__name__}.")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ConfigError(
            "This model is wrapped in DistributedDataParallel, whose gradient hooks only fire in "
            "backward(), which PC learning never calls: the ranks would drift apart silently. "
            "Convert the plain module (ddp.module) and wrap the result in "
            "pccompile.distributed.DataParallel (docs/train.md)."
        )
    cfg = make_rule(rule, **rule_options)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if isinstance(example_inputs, list):
        raise InputError("Pass several example inputs as a tuple, not a list.")
    if granularity is None:
        granularity = rule_of(cfg).granularity
    if level is None:
        level = not rule_of(cfg).approximate
    opts = CaptureOptions(tuple(leaf_modules), concrete_args, level, capture, granularity)
    return PCModule(model, inputs, cfg, loss_fn, functools.partial(build_plan, opts=opts), opts)


def unconvert(pcm: PCModule) -> nn.Module:
    """The plain ``nn.Module`` behind ``pcm`` (same object, carrying the trained weights)."""
    if not isinstance(pcm, PCModule):
        raise ConfigError(f"unconvert() takes a PCModule, got {type(pcm).__name__}.")
    return pcm.original
