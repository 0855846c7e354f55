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
  ``meta``      non-float or non-tensor results (sizes, masks, indices): constants of the pass.
  ``output``    the graph output.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from .errors import InputError, TraceError, UnsupportedOpError
from .ops import OpRule, rule_for

__all__ = ["NodeInfo", "annotate", "check_trace", "complete_inputs", "record_values",
           "is_float_tensor",
           "float_leaves"]  # fmt: skip


@dataclass
class NodeInfo:
    role: str
    rule: OpRule | None = None
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # float tensors in the value
    dtype: torch.dtype | None = None
    depends_on_params: bool = False
    sources: tuple[fx.Node, ...] = ()  # for role "struct": the vertices/inputs it moves


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
    """``inputs`` extended with the defaults of trailing optional arguments (``h0=None``).

    Raises:
        InputError: too few or too many inputs for the traced signature.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = sum(1 for n in placeholders if not n.args)
    if not required <= len(inputs) <= len(placeholders):
        names = ", ".join(p.name + ("" if not p.args else "=...") for p in placeholders)
        count = (
            f"{required}" if required == len(placeholders) else f"{required} to {len(placeholders)}"
        )
        raise InputError(
            f"The model takes {count} input(s) ({names}) but {len(inputs)} were given; pass them "
            f"positionally (several example inputs as a tuple)."
        )
    return tuple(inputs) + tuple(p.args[0] for p in placeholders[len(inputs) :])


def record_values(gm: fx.GraphModule, inputs: tuple) -> dict[fx.Node, Any]:
    """Run ``gm`` once for value types, leaving buffers and RNG streams as they were."""
    buffers = [(b, b.detach().clone()) for b in gm.buffers()]
    devices = sorted({t.device.index or 0 for t in float_leaves(inputs) if t.is_cuda})
    rec = _Recorder(gm)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            rec.run(*inputs)
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return rec.values


def check_trace(
    model: torch.nn.Module,
    inputs: tuple,
    traced_out: Any,
    training: bool,
    concrete_args: dict | None,
) -> None:
    """Compare the traced graph's output with the module's own, on the example inputs.

    Python that behaves differently under tracing (``isinstance`` on a tensor, Python randomness
    or state, ``is None`` on an argument) silently takes another branch in the graph; this is
    where such a graph is refused instead of trained. Rounding differences (an unrolled LSTM vs
    torch's fused kernel) pass. Buffers, training flags and the RNG are restored afterwards.
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = {m: m.training for m in model.modules()}
    devices = sorted({t.device.index or 0 for t in float_leaves(inputs) if t.is_cuda})
    try:
        model.train(training)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            eager = model(*inputs, **(concrete_args or {}))
    except Exception:  # the eager call itself needs other arguments: nothing to compare
        return
    finally:
        for m, mode in flags.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
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
            elif a.is_floating_point() and b.is_floating_point():
                tol = 1e-5 * (1.0 + float(b.abs().max())) if b.numel() else 0.0
                diff = float((a - b).abs().max()) if b.numel() else 0.0
                if not diff <= max(tol, 1e-3 * float(b.abs().max() if b.numel() else 0)):
                    problem = f"output {k} differs by up to {diff:.3g}"
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


def _moves_data(node: fx.Node, info: dict[fx.Node, NodeInfo], values: dict) -> bool:
    """Whether ``node`` only moves vertex values around (no computation on tensors)."""
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
    return target in (tuple, list, dict) or (isinstance(target, type) and issubclass(target, tuple))


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
        raise InputError(
            f"Running the traced model on the example inputs failed: {type(exc).__name__}: "
            f"{exc}. Check the example inputs' shapes and dtypes."
        ) from exc

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
        if node.op == "placeholder":
            meta.role = "input"
        elif node.op == "get_attr":
            trainable = isinstance(value, torch.nn.Parameter) and value.requires_grad
            meta.role = "param" if trainable else "const"
            meta.depends_on_params = trainable
        elif node.op == "output":
            meta.role = "output"
        else:
            data_args = [a for a in args if info[a].role in ("vertex", "struct", "input")]
            if data_args and _moves_data(node, info, values):
                meta.role = "struct"
                sources: dict[fx.Node, None] = {}
                for a in data_args:
                    for src in info[a].sources if info[a].role == "struct" else (a,):
                        sources[src] = None
                meta.sources = tuple(sources)
            elif floats and data_args:
                meta.role = "vertex"
                module = gm.get_submodule(node.target) if node.op == "call_module" else None
                meta.rule = rule_for(node, module, user_leaf=node.target in user_leaves)
                if module is not None:
                    meta.depends_on_params = meta.depends_on_params or any(
                        p.requires_grad for p in module.parameters()
                    )
            elif floats and meta.depends_on_params:
                meta.role = "param_op"
        info[node] = meta
        node.meta["pc"] = meta
    return values.get(next(n for n in gm.graph.nodes if n.op == "output"))
