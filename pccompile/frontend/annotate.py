"""Annotate: decide what every FX node is to the PC network.

Reads: a functionalised GraphModule and example inputs (run once, on the side: buffers and the
global RNG are restored afterwards, so the user's model and random stream are untouched).
Writes: ``node.meta["pc"]`` (a :class:`NodeInfo`) on every node; nothing else.
Roles:
  ``input``     placeholder: clamped to the data, never a value node.
  ``param``     get_attr of a trainable Parameter.   ``const``: any other constant.
  ``param_op``  float result computed from parameters/constants only (a parameter transform,
                e.g. ``class_token.expand(n)``): part of the consuming vertex's θ.
  ``vertex``    float result with a data path from an input or a vertex: gets a value node and an
                error node. Needs a rule from :mod:`pccompile.ops`.
  ``struct``    pure data movement between vertices: ``getitem`` into a vertex's tuple/list/dict
                output, or building a tuple/namedtuple/list/dict of vertex values. Fused into
                its readers (``sources`` lists the vertices and inputs it moves).
  ``meta``      constants of the pass, computed once in the feed-forward pass: non-float
                results (sizes, masks, indices), and float results no gradient flows through
                in BP (code under ``torch.no_grad()``, random draws, ``new_zeros``-like factories).
  ``effect``    a buffer update the traced code made in place (``self.count += 1``): replayed
                once per forward, as BP's forward makes it.
  ``identity``  an identity vertex the levelling pass inserted (:mod:`pccompile.frontend.level`).
  ``output``    the graph output.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.fx._pytree as fx_pytree
from torch.utils._pytree import tree_flatten

from ..errors import InputError, TraceError, UnsupportedOpError
from ..ops import OpRule, rule_for, source_line
from ..preserve import preserved, python_state, root_hooks_off
from .capture import attribute_change_error
from .functionalize import assign_buffer
from .pytrees import register_dataclasses

__all__ = [
    "NodeInfo",
    "annotate",
    "check_trace",
    "complete_inputs",
    "record_values",
    "is_float_tensor",
    "float_leaves",
]


@dataclass
class NodeInfo:
    role: str
    rule: OpRule | None = None
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # float tensors in the value
    dtype: torch.dtype | None = None
    depends_on_params: bool = False
    # a non-float tensor computed from the inputs (token ids reshaped, a padding mask): clamped
    # data like the inputs themselves; a parameter use reading it is a vertex, not a transform
    from_input: bool = False
    sources: tuple[fx.Node, ...] = ()  # for role "struct": the vertices/inputs it moves
    # written by pccompile.frontend.level:
    level: int = -1  # longest path to the output over the PC graph's edges (output = 0)
    live: bool = False  # a vertex/input that reaches the output (dead ones run feed-forward only)
    pads: tuple[fx.Node, fx.Node] | None = None  # identity vertices: the edge (u, c) they pad


class TracedRunError(InputError):
    """The captured graph fails on the example inputs (the module itself may not: a trace that
    took a branch the inputs do not fit). ``capture="auto"`` then tries the other front end."""


def is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def float_leaves(value: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(value)
    return [t for t in leaves if is_float_tensor(t)]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def complete_inputs(gm: fx.GraphModule, inputs: tuple) -> tuple:
    """``inputs`` as the graph's placeholders take them: extended with the defaults of trailing
    optional arguments (``h0=None``); for a graph captured by ``torch.export``, flattened with
    the input structure it recorded (a list of tensors is several placeholders).

    Raises:
        InputError: too few or too many inputs for the traced signature.
    """
    spec = getattr(gm, "_in_spec", None)
    if spec is not None:
        return _flatten_with(spec, inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    var = [p for p in placeholders if p.target.startswith("*")]  # *args, **kwargs of forward
    named = [p for p in placeholders if p not in var]
    required = sum(1 for n in named if not n.args)
    has_star = any(not p.target.startswith("**") for p in var)
    if len(inputs) < required or (len(inputs) > len(named) and not has_star):
        names = ", ".join(p.name + ("" if not p.args else "=...") for p in named)
        count = f"{required}" if required == len(named) else f"{required} to {len(named)}"
        raise InputError(
            f"The model takes {count} input(s) ({names}) but {len(inputs)} were given; pass them "
            f"positionally (several example inputs as a tuple)."
        )
    out = list(inputs[: len(named)]) + [p.args[0] for p in named[len(inputs) :]]
    for p in var:  # what Python binds to *args (the extra positionals) and **kwargs (nothing)
        out.append({} if p.target.startswith("**") else tuple(inputs[len(named) :]))
    return tuple(out)


def _flatten_with(spec: Any, inputs: tuple) -> tuple:
    try:
        return tuple(fx_pytree.tree_flatten_spec((list(inputs), {}), spec))
    except Exception as exc:
        raise InputError(
            f"The inputs do not have the structure the model was converted with ({spec}): "
            f"{exc}. Pass them as at conversion."
        ) from exc


def record_values(gm: fx.GraphModule, inputs: tuple) -> dict[fx.Node, Any]:
    """Run ``gm`` once for value types; its modules, buffers and RNG streams stay as they were."""
    rec = _Recorder(gm)
    with preserved(gm, inputs), torch.no_grad():
        rec.run(*inputs)
    return rec.values


def _tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the trace-vs-eager check: 1e-12 in float64; 32 ulps in lower
    precisions, room for a reordered reduction (an unrolled LSTM against torch's fused kernel)
    and nothing more."""
    return 1e-12 if dtype == torch.float64 else 32 * torch.finfo(dtype).eps


def check_trace(
    model: torch.nn.Module,
    inputs: tuple,
    traced_out: Any,
    training: bool | None,
    concrete_args: dict | None,
) -> None:
    """Compare the traced graph's output with the module's own, on the example inputs.

    Python that behaves differently under tracing (``isinstance`` on a tensor, Python randomness
    or state, ``is None`` on an argument) silently takes another branch in the graph; this is
    where such a graph is refused instead of trained. The comparison is relative to the output's
    scale at a dtype-tight tolerance (:func:`_tolerance`). The model is left as it was
    (:func:`pccompile.preserve.preserved`).

    Raises:
        TraceError: the outputs differ, or the module's own forward fails on the inputs.
    """
    try:
        with preserved(model, inputs, training=training), torch.no_grad(), root_hooks_off(model):
            before = python_state(model)
            eager = model(*inputs, **(concrete_args or {}))
            changed = sorted(k for k, v in python_state(model).items() if before.get(k, v) != v)
    except Exception as exc:
        raise TraceError(
            f"Running {type(model).__name__} itself on the example inputs failed "
            f"({type(exc).__name__}: {exc}), although its traced graph ran: the trace does not "
            f"compute what the module computes. Check the example inputs, or make the submodule "
            f"whose forward differs under tracing a leaf (convert(..., leaf_modules=[...]))."
        ) from exc
    if changed:  # torch.export restores them silently: the graph would never change them
        raise attribute_change_error(model, changed)
    ours, theirs = tree_flatten(traced_out)[0], tree_flatten(eager)[0]
    problem = None
    if len(ours) != len(theirs):
        problem = f"it returns {len(ours)} values where the module returns {len(theirs)}"
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if problem:
            break
        if isinstance(b, torch.Tensor) and isinstance(a, torch.Tensor):
            if a.shape != b.shape:
                problem = f"output {k} has shape {tuple(a.shape)}, the module's {tuple(b.shape)}"
            elif a.is_floating_point() and b.is_floating_point() and b.numel():
                diff = float((a.detach().double() - b.detach().double()).abs().max())
                scale = float(b.detach().double().abs().max())
                tol = _tolerance(b.dtype)
                # relative to the output's own scale, however small (an absolute floor of 1
                # accepted a graph 4e-4 relative off on outputs of size 1e-3); all-zero
                # outputs are compared absolutely
                rel = diff / scale if scale > 0 else diff
                if not rel <= tol:
                    problem = (
                        f"output {k} differs by up to {diff:.3g} (relative {rel:.3g} > {tol:.1g})"
                    )
            elif not torch.equal(a, b):
                problem = f"output {k} differs"
        elif type(a) is not type(b) or (not isinstance(a, torch.Tensor) and a != b):
            problem = f"output {k} is {a!r}, the module's is {b!r}"
    if problem:
        raise TraceError(
            f"The traced graph of {type(model).__name__} differs from the module's own output on "
            f"the example inputs: {problem}. Python that behaves differently under torch.fx "
            f"tracing took another branch (isinstance checks on tensors, Python random or state, "
            f"`is None` tests on arguments). Make the submodule that does it a leaf "
            f"(convert(..., leaf_modules=[...])), or fix the argument with concrete_args."
        )


def _storage(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.layout == torch.strided and value.numel():
        try:
            return value.untyped_storage().data_ptr()
        except RuntimeError:  # storage-less tensors (some complex/conjugate views, subclasses)
            return None
    return None


def check_inplace_aliases(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
    """Refuse in-place writes that other tensors would see through shared memory.

    :func:`pccompile.capture.functionalize` rewrote ``m.op_()`` as ``m2 = m.op()`` and pointed
    ``m``'s later readers at ``m2``. That is what the code meant unless ``m`` shares memory with
    another tensor that is read afterwards (``h[:, :1].mul_(c)`` changes ``h``), is the caller's
    input, or is (a view of) a buffer or parameter: those writes would be silently dropped.

    Raises:
        TraceError: naming the line, the tensor that would see the write, and the fix.
    """
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    by_storage: dict[int, list[fx.Node]] = {}
    for n in nodes:
        key = _storage(values.get(n))
        if key is not None:
            by_storage.setdefault(key, []).append(n)
    for node in nodes:
        m = node.meta.get("pc_inplace_of")
        key = _storage(values.get(m)) if m is not None else None
        if key is None:
            continue
        for a in [m] + by_storage.get(key, []):
            if a is node or (a is not m and a.op == "get_attr" and m.op == "get_attr"):
                continue
            why = None
            if a.op == "placeholder":
                why = f"it writes into the model's input {a.name!r}, which the caller sees"
            elif a.op == "get_attr" and m.op != "get_attr":
                why = f"it writes through a view into {a.target!r}, a buffer or parameter"
            elif a is not m and any(order.get(u, -1) > order[node] for u in a.users):
                why = f"{a.name!r} shares its memory and is read afterwards"
            if why:
                raise TraceError(
                    f"An in-place write cannot be made out of place: {why}\n  at "
                    f"{source_line(node)}\nPC value nodes are never mutated, and rewriting "
                    f"this write out of place would drop its effect on the other tensor. Write it "
                    f"out of place (torch.cat, torch.where, index_put, or clone() before "
                    f"mutating), or make the module that does it a leaf "
                    f"(convert(..., leaf_modules=[...]))."
                )


def _moves_data(
    node: fx.Node, info: dict[fx.Node, NodeInfo], values: dict, module: torch.nn.Module | None
) -> bool:
    """Whether ``node`` only moves vertex values around (no computation on tensors).

    ``nn.Identity`` returns its input itself: autograd sees no op there, and the gradients of its
    readers accumulate straight into the input's, in the engine's order. As a vertex of its own
    it would sum its readers' feedback first and change the rounding; as data movement its
    readers read the input's value node, exactly as autograd does."""
    if node.op == "call_module":
        return type(module) is torch.nn.Identity
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem:
        producer = node.args[0]
        if not (isinstance(producer, fx.Node) and info[producer].role in ("vertex", "struct")):
            return False
        if isinstance(values.get(producer), torch.Tensor):
            return False  # tensor indexing computes: it is a vertex
        if isinstance(node.args[1], fx.Node):
            raise UnsupportedOpError(
                f"Node {node.name!r} indexes the tuple output of {producer.name!r} with a "
                f"computed index; use a constant index or make the module a leaf."
            )
        return True
    if target in (tuple, list, dict):
        return True
    return isinstance(target, type) and (
        issubclass(target, tuple) or dataclasses.is_dataclass(target)
    )


def annotate(gm: fx.GraphModule, inputs: tuple, user_leaves: set[str]) -> Any:
    """Write ``node.meta["pc"]`` for every node of ``gm``; return the graph's output on
    ``inputs`` (computed on the side, for :func:`check_trace`).

    Raises:
        InputError: ``inputs`` do not fit the model's placeholders.
        UnsupportedOpError: a vertex calls an op without a rule.
    """
    inputs = complete_inputs(gm, inputs)
    try:
        values = record_values(gm, inputs)
    except Exception as exc:
        raise TracedRunError(
            f"Running the traced model on the example inputs failed: {type(exc).__name__}: "
            f"{exc}. If the module itself runs on them, the trace took a branch the inputs do "
            f"not fit (e.g. `if arg is None` on an optional argument: fix it with "
            f"concrete_args={{...}}, or convert with capture='export'); otherwise check the "
            f"example inputs' shapes and dtypes."
        ) from exc

    register_dataclasses(list(values.values()))  # dataclass outputs: pytree nodes from here on
    check_inplace_aliases(gm, values)
    info: dict[fx.Node, NodeInfo] = {}
    for node in gm.graph.nodes:
        value = values.get(node)
        floats = float_leaves(value)
        meta = NodeInfo(
            role="meta",
            shapes=[tuple(t.shape) for t in floats],
            dtype=floats[0].dtype if floats else None,
        )
        args = node.all_input_nodes
        meta.depends_on_params = any(info[a].depends_on_params for a in args)
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if module is not None:  # a leaf's own weights count, whatever its inputs are
            meta.depends_on_params |= any(p.requires_grad for p in module.parameters())
        if node.op == "placeholder":
            meta.role = "input"
        elif node.op == "get_attr":
            trainable = isinstance(value, torch.nn.Parameter) and value.requires_grad
            meta.role = "param" if trainable else "const"
            meta.depends_on_params = trainable
        elif node.op == "output":
            meta.role = "output"
        elif node.op == "call_function" and node.target is assign_buffer:
            meta.role = "effect"
        elif node.meta.get("pc_no_grad"):
            meta.depends_on_params = False  # traced under no_grad: a constant of the pass
        else:
            data_args = [a for a in args if info[a].role in ("vertex", "struct", "input")]
            from_input = any(info[a].from_input for a in args)
            meta.from_input = isinstance(value, torch.Tensor) and bool(data_args or from_input)
            if data_args and _moves_data(node, info, values, module):
                meta.role = "struct"
                sources: dict[fx.Node, None] = {}
                for a in data_args:
                    for src in info[a].sources if info[a].role == "struct" else (a,):
                        sources[src] = None
                meta.sources = tuple(sources)
            elif floats and (data_args or (from_input and meta.depends_on_params)):
                rule = rule_for(node, module, user_leaf=node.target in user_leaves)
                if rule.differentiable:
                    meta.role, meta.rule = "vertex", rule
                else:  # random masks, factories: constants of the pass
                    meta.depends_on_params = False
            elif floats and meta.depends_on_params:  # autograd sees what a transform passes on
                meta.role = "param_op"
        info[node] = meta
        node.meta["pc"] = meta
    return values.get(next(n for n in gm.graph.nodes if n.op == "output"))
