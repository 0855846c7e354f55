"""Unroll: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` calls become one vertex per time step.

Reads: a captured GraphModule and example inputs (for the sequence length and layout).
Writes: the same GraphModule, each recurrent call replaced by per-step cell calls
(``torch.lstm_cell``, ``torch.gru_cell``, ``torch.rnn_tanh_cell``, ``torch.rnn_relu_cell``) that
read the module's own weights through ``get_attr`` (one parameter *use* per step, so Z-IL takes
each step's contribution at that step's level), every layer and direction, and the module's
``(output, h_n[, c_n])`` rebuilt by stacking. A guard node checks the sequence length at run time:
the graph is fixed at conversion, so a batch of another length raises instead of being truncated.
Invariant: the unrolled graph computes what the module computes (tested to 1e-12 in float64).
Kept as one opaque vertex instead (logged): inter-layer dropout in training mode, ``proj_size``,
unbatched input. ``PackedSequence`` input is an error that says how to convert per length.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import InputError, UnsupportedOpError
from .annotate import complete_inputs, record_values

__all__ = ["unroll_recurrent", "check_sequence_length", "check_no_state"]

log = logging.getLogger(__name__)

_CELLS = {
    "LSTM": torch.lstm_cell,
    "GRU": torch.gru_cell,
    "RNN_TANH": torch.rnn_tanh_cell,
    "RNN_RELU": torch.rnn_relu_cell,
}


def check_sequence_length(x: torch.Tensor, dim: int, expected: int, module: str) -> None:
    """Guard inserted before an unrolled recurrent module."""
    if x.shape[dim] != expected:
        raise InputError(
            f"Recurrent module {module!r} was unrolled for sequences of length {expected} at "
            f"conversion, but got length {x.shape[dim]}. The PC graph has one vertex per time "
            f"step, "
            f"so its length is fixed: pad/crop sequences to {expected}, or convert one PCModule "
            f"per length (pccompile.convert(model, example_of_that_length))."
        )


def check_no_state(hx: Any, module: str) -> None:
    """Guard for a recurrent module unrolled without an initial state."""
    if hx is not None:
        raise InputError(
            f"Recurrent module {module!r} was unrolled without an initial state (it was None in "
            f"the example inputs), but one was given; convert with an example initial state."
        )


def _keep_as_leaf(mod: nn.RNNBase, x: Any) -> str | None:
    if getattr(mod, "proj_size", 0):
        return "proj_size > 0"
    if mod.training and mod.dropout > 0 and mod.num_layers > 1:
        return "inter-layer dropout in training mode (its masks are drawn inside the fused kernel)"
    if x.dim() != 3:
        return "unbatched input"
    return None


def unroll_recurrent(gm: fx.GraphModule, inputs: tuple, user_leaves: set[str]) -> int:
    """Unroll every recurrent ``call_module`` node of ``gm`` in place; returns how many."""
    nodes = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module"
        and n.target not in user_leaves
        and type(gm.get_submodule(n.target)) in (nn.RNN, nn.LSTM, nn.GRU)
    ]
    if not nodes:
        return 0
    values = record_values(gm, complete_inputs(gm, inputs))
    done = 0
    for node in nodes:
        mod = gm.get_submodule(node.target)
        x = values[node.args[0]]
        if not isinstance(x, torch.Tensor):
            raise UnsupportedOpError(
                f"Recurrent module {node.target!r} (node {node.name!r}) receives a "
                f"{type(x).__name__}, not a padded tensor. Variable-length and packed sequences "
                f"cannot be unrolled: the PC graph has one vertex per time step, fixed at "
                f"conversion. Pad the batch to a fixed length (and mask the loss), or convert one "
                f"PCModule per sequence length; or keep the module opaque with "
                f"leaf_modules=[{node.target!r}] and pass padded tensors."
            )
        why = _keep_as_leaf(mod, x)
        if why:
            log.info("Not unrolling %s: %s; it stays one vertex.", node.target, why)
            continue
        hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
        if isinstance(hx, fx.Node) and values.get(hx) is None:
            # The initial state was None at conversion: unroll from zeros, and refuse a state at
            # run time rather than ignore it.
            with gm.graph.inserting_before(node):
                gm.graph.call_function(check_no_state, (hx, node.target))
            node.args = node.args[:1]
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "hx"}
        _unroll(gm.graph, node, mod, tuple(x.shape))
        done += 1
    gm.graph.lint()
    gm.recompile()
    return done


def _unroll(g: fx.Graph, node: fx.Node, mod: nn.RNNBase, shape: tuple[int, ...]) -> None:
    """Replace the recurrent call ``node`` by its per-step cell calls (see the module docs)."""
    u = _Unroller(g, node, mod, shape)
    with g.inserting_before(node):
        u.make("call_function", check_sequence_length, u.inp, u.tdim, u.T, node.target)
        layer_in = [u.make("call_method", "select", u.inp, u.tdim, t) for t in range(u.T)]
        finals: list[list[fx.Node]] = [[], []]
        for layer in range(mod.num_layers):
            per_dir = [u.direction(layer, d, layer_in, finals) for d in range(u.D)]
            layer_in = per_dir[0] if u.D == 1 else u.concat(per_dir)
        output = u.make("call_function", torch.stack, layer_in, u.tdim)
        h_n = u.make("call_function", torch.stack, finals[0], 0)
        state = h_n
        if u.lstm:
            c_n = u.make("call_function", torch.stack, finals[1], 0)
            state = u.make("call_function", tuple, [h_n, c_n])
        result = u.make("call_function", tuple, [output, state])
    node.replace_all_uses_with(result)
    g.erase_node(node)
    # Reads of one element of the result or one time step of a stack go straight to that node,
    # so a many-to-one readout does not depend on (and pad) every step through a stack.
    _fold(result, [output, state])
    if u.lstm:
        _fold(state, [h_n, c_n])
    _fold_stack(output, layer_in, u.tdim)
    _fold_stack(h_n, finals[0], 0)
    if u.lstm:
        _fold_stack(c_n, finals[1], 0)
    erased = set()
    for n in reversed(u.created):  # drop what no reader needs (e.g. c_n, unused stacks)
        if n.target is not check_sequence_length and not n.users and n not in erased:
            g.erase_node(n)
            erased.add(n)


class _Unroller:
    """Builds the cell calls of one recurrent module call, recording every node it creates."""

    def __init__(self, g: fx.Graph, node: fx.Node, mod: nn.RNNBase, shape: tuple[int, ...]):
        kind = mod.mode if isinstance(mod, nn.RNN) else type(mod).__name__
        self.g, self.node, self.mod, self.cell = g, node, mod, _CELLS[kind]
        self.lstm = kind == "LSTM"
        self.tdim = 1 if mod.batch_first else 0
        self.T, self.D = shape[self.tdim], 2 if mod.bidirectional else 1
        self.inp = node.args[0]
        self.hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
        self.created: list[fx.Node] = []
        self._zeros: fx.Node | None = None

    def make(self, op: str, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        n = self.g.create_node(op, target, args, kwargs)
        self.created.append(n)
        return n

    def weight(self, name: str) -> fx.Node | None:
        has = hasattr(self.mod, name)
        return self.make("get_attr", f"{self.node.target}.{name}") if has else None

    def initial(self, which: int, layer: int, d: int) -> fx.Node:
        """The initial hidden (``which=0``) or cell (``1``) state of one layer and direction."""
        if self.hx is None:  # zeros, as the module uses: a constant of the pass, not a vertex
            if self._zeros is None:
                batch = self.make("call_method", "size", self.inp, 1 - self.tdim)
                dtype = self.make("call_function", getattr, self.inp, "dtype")
                device = self.make("call_function", getattr, self.inp, "device")
                size = self.mod.hidden_size
                self._zeros = self.make(
                    "call_function", torch.zeros, batch, size, dtype=dtype, device=device
                )
            return self._zeros
        state = self.hx
        if self.lstm:
            state = (
                self.hx[which]
                if isinstance(self.hx, (tuple, list))
                else self.make("call_function", operator.getitem, self.hx, which)
            )
        return self.make("call_function", operator.getitem, state, layer * self.D + d)

    def direction(self, layer: int, d: int, layer_in: list, finals: list) -> list[fx.Node]:
        """The cell calls of one layer in one direction; the hidden state per time step."""
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w = [self.weight(f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h = self.initial(0, layer, d)
        c = self.initial(1, layer, d) if self.lstm else None
        hs: list[Any] = [None] * self.T
        for t in range(self.T) if d == 0 else range(self.T - 1, -1, -1):
            if self.lstm:
                state = self.make("call_function", self.cell, layer_in[t], (h, c), *w)
                h = self.make("call_function", operator.getitem, state, 0)
                c = self.make("call_function", operator.getitem, state, 1)
            else:
                h = self.make("call_function", self.cell, layer_in[t], h, *w)
            hs[t] = h
        finals[0].append(h)
        if self.lstm:
            finals[1].append(c)
        return hs

    def concat(self, per_dir: list[list[fx.Node]]) -> list[fx.Node]:
        """Both directions' hidden states joined per time step (the next layer's input)."""
        return [
            self.make("call_function", torch.cat, [per_dir[0][t], per_dir[1][t]], -1)
            for t in range(self.T)
        ]


def _fold(pack: fx.Node, elements: list[fx.Node]) -> None:
    for user in list(pack.users):
        if (
            user.op == "call_function"
            and user.target is operator.getitem
            and isinstance(user.args[1], int)
        ):
            user.replace_all_uses_with(elements[user.args[1]])
            user.graph.erase_node(user)


def _fold_stack(stack: fx.Node, elements: list[fx.Node], dim: int) -> None:
    n = len(elements)
    for user in list(stack.users):
        if not (user.op == "call_function" and user.target is operator.getitem):
            continue
        idx = user.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != dim + 1 or not isinstance(idx[dim], int) or not -n <= idx[dim] < n:
            continue
        if any(not (isinstance(i, slice) and i == slice(None)) for i in idx[:dim]):
            continue
        user.replace_all_uses_with(elements[idx[dim]])
        user.graph.erase_node(user)
