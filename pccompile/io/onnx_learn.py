"""The learning step as a program: one PC learn step traced to ATen ops, for the ONNX export.

Reads: a :class:`PCModule` (its plan for the current training mode, its parameters and the
buffers the step updates), example inputs, a target, a loss function and the rule.
Writes: a :class:`LearnProgram`: an ``fx.GraphModule`` of ATen ops
``(*inputs, target, *params, *buffers) -> (loss, *grads, *new buffers)`` and the names of its
inputs and outputs; :func:`export_learn` turns it into an ONNX file (torch.export, a few
decompositions the exporter needs, the dynamo ONNX exporter, nodes named by phase), checked in
onnxruntime and published atomically. :func:`pccompile.io.onnx.export_onnx` calls it.
Invariants: the traced step *is* ``PCModule.learn``'s code path (the plan's feed-forward pass, its
per-vertex local VJPs in :func:`~pccompile.rules.propagate.propagate`, IL's
:func:`~pccompile.engine.inference.run_inference`), run on the step's inputs instead of the
module's tensors; nothing of the module changes (no ``.grad``, no buffer, no training flag).

Two steps:

* ``learn``: Z-IL's efficient schedule (FPA's with ``rule="fpa"``): the feed-forward pass, then
  level by level the local VJPs of that level's vertices, each parameter's contribution taken at
  its own vertex's level. Every traced op is tagged with its phase (``forward``, ``level_<t>``,
  ``params``) and the ONNX nodes are named after it, so the levels are visible in the file.
* ``il-learn``: IL's ``T`` inference steps unrolled (each step's ops tagged ``step_<s>``), then
  every weight's local gradient from the final state, scaled as ``PCModule.learn`` scales it.

``torch.autograd`` runs per vertex here exactly as in ``learn``; ``make_fx`` records the ops
autograd executes, so the graph holds each vertex's VJP as explicit ATen ops and no autograd.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
from torch.nn.utils.stateless import _reparametrize_module

from ..engine.evaluate import feed_forward
from ..engine.grads import Grads
from ..engine.inference import run_inference
from ..engine.plan import Plan
from ..errors import ConfigError, PCCompileError
from ..frontend.annotate import complete_inputs
from ..module import PCModule
from ..rules import RuleConfig, make_rule, rule_of
from ..rules.il import IL, setup_of
from ..rules.propagate import propagate
from .atomic import atomic_output
from .onnx import (
    DEFAULT_TOL,
    ExportError,
    OnnxExport,
    _check,
    _input_names,
    _like,
    _require_match,
    require_onnx,
)

__all__ = [
    "LEARN_GRAPHS",
    "LearnExportError",
    "LearnGraph",
    "LearnProgram",
    "export_learn",
    "phase_of",
    "trace_learn_step",
]

LearnGraph = Literal["learn", "il-learn"]
LEARN_GRAPHS: tuple[str, ...] = ("learn", "il-learn")
PHASE_KEY = "pc_phase"  # key of node.meta["custom"] holding an op's phase
GRAD_PREFIX, NEW_PREFIX = "grad.", "new."


class LearnExportError(ExportError):
    """The learn step cannot be exported (a rule or an op the learn graph does not support)."""


@dataclass
class LearnProgram:
    """A traced learn step (see the module docstring).

    Attributes:
        gm: the step as ATen ops, ``gm(*args) -> (loss, *grads, *new_buffers)``.
        args: the example arguments it was traced with (inputs, target, params, buffers).
        input_names / output_names: the ONNX names of ``gm``'s inputs and outputs.
        params: the trainable parameters' ``state_dict`` names, in input order.
        buffers: the names of the buffers the step updates (BatchNorm running statistics).
        rule: the rule the step computes.
        phases: phase -> number of ops traced in it (``forward``, ``level_1``, ...).
    """

    gm: fx.GraphModule
    args: tuple
    input_names: list[str]
    output_names: list[str]
    params: list[str]
    buffers: list[str]
    rule: RuleConfig
    n_inputs: int
    phases: dict[str, int] = field(default_factory=dict)


def trace_learn_step(
    pcm: PCModule,
    example_inputs: tuple,
    target: torch.Tensor,
    loss_fn: Callable,
    graph: LearnGraph = "learn",
    rule: str | RuleConfig | None = None,
    input_names: list[str] | None = None,
) -> LearnProgram:
    """Trace one learn step of ``pcm`` (in its current training mode) to ATen ops.

    Args:
        pcm: a converted model; not modified.
        example_inputs: the model's inputs (the traced shapes are theirs: static).
        target: an example target (its shape and dtype are the traced ones).
        loss_fn: ``loss_fn(output, target) -> scalar``, any traceable torch loss.
        graph: ``"learn"`` (Z-IL or FPA, exactly BP) or ``"il-learn"`` (IL, ``T`` steps).
        rule: the rule (name or config). ``learn``: ``"zil"`` (default) or ``"fpa"``, in a
            setting that equals BP; ``il-learn``: an :class:`~pccompile.IL` config (default:
            ``pcm.rule`` if it is IL, else ``IL()``).
        input_names: names of the model inputs (default ``input_<k>``).

    Returns:
        A :class:`LearnProgram`.

    Raises:
        LearnExportError: a rule that is not exact for ``learn``, an IL option the graph cannot
            hold, random ops (dropout) in the step, or a step ``make_fx`` cannot trace.
    """
    if graph not in LEARN_GRAPHS:
        raise ConfigError(f"learn graph must be one of {LEARN_GRAPHS}, got {graph!r}.")
    if not isinstance(target, torch.Tensor):
        raise LearnExportError(
            f"The learn graph takes one target tensor, got a {type(target).__name__}; export "
            f"models with a single target tensor."
        )
    plan = pcm.plan
    cfg = _rule_for(pcm, plan, graph, rule)
    params = [(n, p) for n, p in pcm.named_parameters() if p.requires_grad]
    buffers = _state_buffers(pcm, plan)
    step = _Step(plan, loss_fn, cfg, len(example_inputs), params, buffers)
    args = (
        *(x.detach() for x in example_inputs),
        target.detach(),
        *(p.detach() for _, p in params),
        *(b.detach() for _, b in buffers),
    )
    gm = _make_fx(step, args)
    _refuse_random_ops(gm)
    names = list(input_names or [f"input_{k}" for k in range(len(example_inputs))])
    tname = "target" if "target" not in names else "target_"
    pnames = [n for n, _ in params]
    bnames = [n for n, _ in buffers]
    return LearnProgram(
        gm=gm,
        args=args,
        input_names=[*names, tname, *pnames, *bnames],
        output_names=[
            "loss",
            *(GRAD_PREFIX + n for n in pnames),
            *(NEW_PREFIX + n for n in bnames),
        ],
        params=pnames,
        buffers=bnames,
        rule=cfg,
        n_inputs=len(example_inputs),
        phases=_count_phases(gm),
    )


def phase_of(node: fx.Node) -> str | None:
    """The phase a traced op was tagged with (``forward``, ``level_<t>``, ``step_<s>``...)."""
    custom = node.meta.get("custom")
    return custom.get(PHASE_KEY) if isinstance(custom, dict) else None


# ----------------------------------------------------------------------------------- the rule
def _rule_for(pcm: PCModule, plan: Plan, graph: str, rule: str | RuleConfig | None) -> RuleConfig:
    if graph == "learn":
        cfg = make_rule("zil" if rule is None else rule)
        if cfg.name not in ("zil", "fpa"):
            raise LearnExportError(
                f"--graph learn computes an exact rule (zil or fpa), not {cfg.name!r}; use "
                f"--graph il-learn for IL."
                if cfg.name == "il"
                else f"--graph learn computes an exact rule (zil or fpa), not {cfg.name!r}."
            )
        problems = rule_of(cfg).exactness_problems(plan, cfg)
        if problems:
            raise LearnExportError(
                f"--graph learn writes the exact step (equal to BP), but {cfg.name} with this "
                f"setting is not exact: {'; '.join(problems)}. Use the default setting (gamma=1, "
                f"steps=None), rule='fpa' on an unleveled graph, or --graph il-learn for IL."
            )
        return cfg
    default = pcm.rule if pcm.rule.name == "il" else IL()
    cfg = default if rule is None else make_rule(rule)
    if cfg.name != "il":
        raise LearnExportError(
            f"--graph il-learn computes IL, not {cfg.name!r}; use --graph learn for zil/fpa."
        )
    if cfg.value_optimizer is not None:
        raise LearnExportError(
            "--graph il-learn unrolls plain inference steps (x -= gamma dF/dx); "
            "IL(value_optimizer=...) is not supported. Drop value_optimizer to export."
        )
    learned = [k for k, fn in dict(cfg.energies).items() if isinstance(fn, torch.nn.Module)]
    if any(any(True for _ in cfg.energies[k].parameters()) for k in learned):
        raise LearnExportError(
            f"--graph il-learn: the energies of {learned} have parameters of their own, which "
            f"the graph does not take as inputs; use energies without parameters."
        )
    return dataclasses.replace(cfg, compile=False)  # the graph is the loop itself


def _state_buffers(pcm: PCModule, plan: Plan) -> list[tuple[str, torch.Tensor]]:
    """The buffers a train-mode step updates: those of stateful modules (BatchNorm) and those
    the forward writes (torch.export's buffer mutations), named as in ``state_dict``."""
    if not plan.training:
        return []
    touched: set[int] = set()
    for v in plan.vertices:
        if v.rule is not None and v.rule.protects_buffers and v.module is not None:
            touched.update(id(b) for b in v.module.buffers())
    gm_buffers = dict(plan.gm.named_buffers(remove_duplicate=False))
    touched.update(id(gm_buffers[n]) for n in plan.written if n in gm_buffers)
    return [(n, b) for n, b in pcm.named_buffers() if id(b) in touched]


# ----------------------------------------------------------------------------------- the step
class _Step:
    """``(*inputs, target, *params, *buffers) -> (loss, *grads, *new_buffers)``: ``learn``'s
    code path with the module's parameters and buffers replaced by the step's arguments."""

    def __init__(self, plan: Plan, loss_fn: Callable, cfg: RuleConfig, n_inputs: int, params, bufs):
        self.plan, self.loss_fn, self.cfg, self.n_inputs = plan, loss_fn, cfg, n_inputs
        self.params = [p for _, p in params]
        self.buffers = [b for _, b in bufs]
        # the plan's GraphModule names of each parameter and buffer, one per attribute slot (a
        # tied weight has several slots; the export front end other names than the user's
        # module). A slot reachable by two paths (a module in a layer group and at the root)
        # is named once: reparametrizing it twice would restore the wrong tensor.
        gm_names: dict[int, list[str]] = {}
        slots: set[tuple[int, str]] = set()
        for n, t in (
            *plan.gm.named_parameters(remove_duplicate=False),
            *plan.gm.named_buffers(remove_duplicate=False),
        ):
            owner, _, attr = n.rpartition(".")
            slot = (id(plan.gm.get_submodule(owner)), attr)
            if slot not in slots:
                slots.add(slot)
                gm_names.setdefault(id(t), []).append(n)
        self.gm_names = gm_names

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        plan, n = self.plan, self.n_inputs
        inputs, target = args[:n], args[n]
        k = n + 1 + len(self.params)
        # the step's own autograd leaves and buffer copies: the caller's arguments stay as given
        ps = [p.detach().requires_grad_() for p in args[n + 1 : k]]
        bs = [b.clone() for b in args[k:]]
        table: dict[str, torch.Tensor] = {}
        for orig, new in (*zip(self.params, ps), *zip(self.buffers, bs)):
            for name in self.gm_names.get(id(orig), []):
                table[name] = new
        sub = {id(p): q for p, q in zip(self.params, ps)}
        with torch.enable_grad(), _reparametrize_module(plan.gm, table):
            plan_here = _substituted(plan, sub)
            if not (plan.plain_inputs and len(inputs) == plan.n_inputs):
                inputs = complete_inputs(plan.gm, inputs)
            with _phase("forward"):
                ff = feed_forward(
                    plan_here, tuple(inputs), target, self.loss_fn, record_state=self._il
                )
            if self._il:
                grads = self._il_grads(plan_here, ff, target)
            else:
                grads = self._exact(plan_here, ff)
            with _phase("params"):
                grads.finish(plan_here, ff)
        out = [ff.loss.detach()]
        for q in ps:
            g = grads.params.get(q)
            out.append(torch.zeros_like(q) if g is None else g)
        return (*out, *bs)

    @property
    def _il(self) -> bool:
        return self.cfg.name == "il"

    def _exact(self, plan: Plan, ff):
        last = plan.depth if self.cfg.name == "fpa" else rule_of(self.cfg).steps(plan, self.cfg) - 1
        return propagate(plan, ff, gamma=1.0, last_level=last, scope=_level)

    def _il_grads(self, plan: Plan, ff, target):
        # ILRule.run's eager loop; params_at is asked once per evaluation, at its start, which
        # is where each step's phase begins
        cfg = self.cfg
        steps = rule_of(cfg).steps(plan, cfg)
        out: list = []
        with _StepPhases() as phases:
            run_inference(
                plan,
                ff,
                target,
                self.loss_fn,
                dataclasses.replace(setup_of(cfg, steps), log_energy=False),
                params_at=lambda s: phases.enter(s) or s == steps,
                on_params=lambda s, g: out.append(g),
            )
        return out[0] if out else Grads()


def _substituted(plan: Plan, sub: dict[int, torch.Tensor]) -> Plan:
    """``plan`` with every vertex's parameter uses replaced by ``sub`` (by identity): the local
    VJPs then differentiate with respect to the step's parameters, not the module's."""

    def swap(ps: tuple) -> tuple:
        return tuple(sub.get(id(p), p) for p in ps)

    vertices = [dataclasses.replace(v, params=swap(v.params)) for v in plan.vertices]
    return dataclasses.replace(
        plan,
        vertices=vertices,
        output=vertices[plan.output.vid],
        vertex_at=[None if v is None else vertices[v.vid] for v in plan.vertex_at],
        live_params=swap(plan.live_params),
        prologue_params=swap(plan.prologue_params),
    )


@contextlib.contextmanager
def _phase(name: str) -> Iterator[None]:
    with fx_traceback.annotate({PHASE_KEY: name}):
        yield


def _level(t: int) -> contextlib.AbstractContextManager:
    return _phase(f"level_{t}")


class _StepPhases:
    """Tags the ops of IL's inference step ``s`` with ``step_<s>`` (entered step by step)."""

    def __init__(self) -> None:
        self._current: contextlib.ExitStack | None = None

    def enter(self, s: int) -> None:
        self.close()
        self._current = contextlib.ExitStack()
        self._current.enter_context(_phase(f"step_{s}"))

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def __enter__(self) -> _StepPhases:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------- tracing
def _make_fx(step: _Step, args: tuple) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with fx_traceback.preserve_node_meta():
            gm = make_fx(step)(*args)
    except PCCompileError:
        raise
    except Exception as exc:
        raise LearnExportError(
            f"Tracing the learn step failed: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:400]}. The loss or a vertex runs something make_fx "
            f"cannot trace (data-dependent Python control flow on tensor values, .item()); "
            f"use a loss made of torch ops."
        ) from exc
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _refuse_random_ops(gm: fx.GraphModule) -> None:
    random = sorted({str(n.target) for n in gm.graph.nodes if _draws(n)})
    if random:
        raise LearnExportError(
            f"The learn step draws random numbers ({', '.join(random)}: dropout or another "
            f"random op in train mode). onnxruntime cannot replay PyTorch's random stream, so "
            f"the exported step could not equal pcm.learn; export in eval mode (pcm.eval(): no "
            f"dropout, and BatchNorm then uses its running statistics) or remove the random op."
        )


def _draws(node: fx.Node) -> bool:
    """Whether an op draws random numbers: tagged ``nondeterministic_seeded``, unless its
    ``dropout_p`` argument is 0 (attention kernels carry the tag for their optional dropout)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded not in target.tags:
        return False
    for k, arg in enumerate(target._schema.arguments):
        if arg.name == "dropout_p":
            p = node.args[k] if k < len(node.args) else node.kwargs.get("dropout_p", 0.0)
            return p != 0.0
    return True


def _count_phases(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            p = phase_of(node) or "other"
            counts[p] = counts.get(p, 0) + 1
    return counts


# ----------------------------------------------------------------------------------- ONNX
def export_learn(
    pcm: PCModule,
    path: str | os.PathLike,
    example_inputs: tuple,
    graph: LearnGraph,
    target: torch.Tensor | None,
    loss_fn: Callable | None,
    rule: str | RuleConfig | None = None,
    *,
    verify: bool = True,
    tol: float = DEFAULT_TOL,
    overwrite: bool = False,
    seed: int = 0,
) -> OnnxExport:
    """:func:`pccompile.io.onnx.export_onnx` for ``graph="learn"`` and ``"il-learn"``: trace the
    step, export it, name its nodes after their phases, check it in onnxruntime on a fresh batch
    against the traced step run in PyTorch, then publish the file atomically."""
    require_onnx(verify, f"the ONNX {graph} graph")
    if target is None or loss_fn is None:
        raise LearnExportError(f"The {graph} graph needs target= and loss_fn=.")
    names = _input_names(pcm, len(example_inputs))
    prog = trace_learn_step(pcm, tuple(example_inputs), target, loss_fn, graph, rule, names)
    result = OnnxExport(os.fspath(path), graph, prog.input_names, prog.output_names, tol=tol)
    with atomic_output(path, overwrite=overwrite) as tmp:
        model = _to_onnx(prog)
        result.nodes = len(model.graph.node)
        result.phases = onnx_phases(model)
        _save(model, tmp)
        if verify:
            fresh = _fresh_args(prog, seed)
            result.per_output = _check(prog.gm, tmp, fresh, prog.input_names)
            result.max_abs_diff = max(result.per_output.values(), default=0.0)
            _require_match(result, path)
    return result


def _to_onnx(prog: LearnProgram) -> Any:
    """The traced step as an ``onnx.ModelProto``: torch.export of the ATen graph (keeping each
    op's phase), the dynamo ONNX exporter, then every node named ``<phase>/<name>``."""
    try:
        with fx_traceback.preserve_node_meta():
            ep = torch.export.export(prog.gm, prog.args, strict=False)
        for node in ep.graph.nodes:
            phase = phase_of(node)
            if phase is not None:  # the exporter writes module scopes into node metadata
                node.meta["nn_module_stack"] = {
                    "L__self__": ("", "pccompile.LearnStep"),
                    phase: (phase, "pccompile.LearnPhase"),
                }
        ep = ep.run_decompositions(_export_decompositions())
        program = torch.onnx.export(
            ep,
            (),
            None,
            dynamo=True,
            input_names=prog.input_names,
            output_names=prog.output_names,
            verbose=False,
        )
    except LearnExportError:
        raise
    except Exception as exc:
        op = _failed_op(exc)
        what = (
            f"the ONNX exporter cannot translate {op}"
            if op
            else f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        )
        raise LearnExportError(
            f"torch.onnx.export(dynamo=True) failed on the learn step: {what}. The step (the "
            f"forward or a vertex's local VJP) uses an op with no ONNX translation; replace the "
            f"layer that uses it, or export its prediction only (--graph predict). Rerun with "
            f"--debug for the exporter's report."
        ) from exc
    model = program.model_proto
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        phase = scopes[1] if len(scopes) > 2 else None
        # keep the scope; drop the exporter's stack traces (most of a small file's bytes)
        keep = [p for p in node.metadata_props if p.key in ("namespace",)]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
        if phase is not None:
            node.name = f"{phase}/{node.name}"
    return model


def _failed_op(exc: BaseException) -> str | None:
    """The ATen op the exporter could not translate, read from its error chain."""
    import re

    seen = 0
    while exc is not None and seen < 10:
        m = re.search(r"Error when translating node .*?target=(torch\.ops\.[\w.]+)", str(exc))
        if m:
            return m.group(1).removeprefix("torch.ops.")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def onnx_phases(model: Any) -> dict[str, int]:
    """Phase -> number of nodes of a learn graph (from the ``<phase>/`` node-name prefixes)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        phase = node.name.split("/", 1)[0] if "/" in node.name else "other"
        counts[phase] = counts.get(phase, 0) + 1
    return counts


def _save(model: Any, dest: Any) -> None:
    import onnx

    onnx.save_model(model, os.fspath(dest))


def _fresh_args(prog: LearnProgram, seed: int) -> tuple:
    """A new random batch and target of the traced shapes; the parameters and buffers as
    given (the ones the module has)."""
    gen = torch.Generator().manual_seed(seed + 1)
    n = prog.n_inputs + 1
    return (*(_like(a, gen) for a in prog.args[:n]), *prog.args[n:])


# ------------------------------------------------------------------------- export decompositions
def _export_decompositions() -> dict:
    """ATen ops rewritten before the ONNX exporter sees them (the traced step, the PyTorch
    reference of the check, keeps the original ops):

    * ``convolution_backward``: the exporter has no translation. Its three results as forward
      convolutions: the input's gradient a transposed convolution of the output's gradient, the
      weight's a convolution of the input by the output's gradient (batch and channels swapped,
      stride and dilation exchanged), the bias's a sum.
    * ``nll_loss_forward``: onnxscript's translation fakes its ``total_weight`` output as 1 (a
      FIXME there), which the backward of a mean cross-entropy divides by; torch's own
      decomposition computes it.
    * ``_scaled_dot_product_flash_attention_for_cpu_backward`` (attention's backward on CPU): no
      translation; :func:`_attention_backward` writes it as matrix products.
    * train-mode batch norm: the exporter writes an ONNX ``BatchNormalization`` that normalises
      with the running statistics; torch's decompositions (batch mean and variance, the
      running-statistic update, and the backward) are plain arithmetic.
    """
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    table = get_decompositions(
        [
            aten.nll_loss_forward,
            aten.nll_loss2d_forward,
            aten._native_batch_norm_legit_functional,
            aten._native_batch_norm_legit,
            aten.native_batch_norm,
            aten.native_batch_norm_backward,
        ]
    )
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten._scaled_dot_product_flash_attention_for_cpu_backward.default] = _attention_backward
    return table


def _attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    logsumexp: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    *,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of CPU flash attention (no dropout) as matrix products: the attention
    weights recomputed from ``q``, ``k`` and the mask, then softmax's VJP."""
    if dropout_p != 0.0 or q.shape[-3] != k.shape[-3]:
        raise LearnExportError(
            "The learn graph holds the backward of scaled_dot_product_attention without "
            "dropout and with as many key/value heads as query heads; this one has "
            f"dropout_p={dropout_p}, {q.shape[-3]} query and {k.shape[-3]} key heads."
        )
    s = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * s
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        keep = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    att = torch.softmax(logits, dim=-1)
    g_att = grad @ v.transpose(-2, -1)
    g_logits = att * (g_att - (g_att * att).sum(-1, keepdim=True))
    gq = (g_logits @ k) * s
    gk = (g_logits.transpose(-2, -1) @ q) * s
    gv = att.transpose(-2, -1) @ grad
    return gq, gk, gv


def _convolution_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    bias_sizes: Any,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    mask: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    aten = torch.ops.aten
    if transposed:
        raise LearnExportError(
            "The learn graph cannot hold the backward of a transposed convolution "
            "(ConvTranspose) yet; export a model without one."
        )
    nd = x.dim() - 2
    k = w.shape[2:]
    gx = gw = gb = None
    if mask[0]:
        # output_padding makes the transposed convolution return the input's size
        extra = [
            x.shape[2 + i]
            - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
            for i in range(nd)
        ]
        gx = aten.convolution(grad, w, None, stride, padding, dilation, True, extra, groups)
    if mask[1]:
        cin, cout = x.shape[1] // groups, w.shape[0] // groups
        parts = []
        for g in range(groups):
            xg = x[:, g * cin : (g + 1) * cin].transpose(0, 1)  # (cin, N, ...)
            gg = grad[:, g * cout : (g + 1) * cout].transpose(0, 1)  # (cout, N, ...)
            r = aten.convolution(xg, gg, None, dilation, padding, stride, False, [0] * nd, 1)
            r = r.transpose(0, 1)  # (cout, cin, k'), k' >= k where the stride does not divide
            for i in range(nd):
                r = r.narrow(2 + i, 0, k[i])
            parts.append(r)
        gw = parts[0] if groups == 1 else torch.cat(parts, 0)
    if mask[2]:
        gb = grad.sum([0, *range(2, grad.dim())])
    return gx, gw, gb
