"""The differential checker: train a BP copy and a PC copy of one model side by side.

Reads: a model (never mutated: both runs train deep copies), micro-batches and a loss.
Writes: nothing outside its copies; returns a :class:`DiffReport`.

One fresh step from ``p.grad = None`` hides most ways an exact rule can leave backprop: a
``.grad`` tensor shared by two parameters is only visible once gradients accumulate or are
clipped; a dropped buffer update only once the next step reads it; a re-evaluation that advances
state only in the faithful schedule. So the checker runs the loop people write, in both copies,
from the same initial state and the same random stream:

    for each step:
        for each micro-batch:                   # gradient accumulation, no zero_grad between
            bp:  loss_fn(model(x), y).backward()     pc: pcm.learn(x, target=y, loss_fn=loss_fn)
        clip_grad_norm_ -> optimizer.step()      # SGD with momentum and weight decay
        optimizer.zero_grad(set_to_none=...)

and after every micro-batch and step compares ``.grad``, parameters, **buffers**, the output and
the global RNG state, and checks that no two parameters share a ``.grad`` tensor (autograd never
does that). Training loops also change the model between steps (freeze a layer, swap the head,
anneal a temperature, call ``eval()``, cast it): ``callbacks`` run before every step, identically
on both runs (:class:`Loop`), so each such habit is checked like the loop itself.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_map

from .api import convert
from .engine.grads import memory_of
from .errors import ConfigError
from .preserve import python_state

__all__ = [
    "HABITS",
    "Habits",
    "Loop",
    "DiffRow",
    "DiffReport",
    "train_against_bp",
    "shared_grads",
]


@dataclass(frozen=True)
class Habits:
    """The training-loop habits both copies follow.

    Attributes:
        steps: optimizer steps. accumulate: micro-batches per step (``backward``/``learn`` each,
        gradients accumulated without zeroing). set_to_none: ``zero_grad(set_to_none=...)``.
        clip: ``clip_grad_norm_`` max norm (None: no clipping). lr, momentum, weight_decay: SGD.
    """

    steps: int = 3
    accumulate: int = 2
    set_to_none: bool = False
    clip: float | None = 1.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class Loop:
    """What a callback of :func:`train_against_bp` sees before a step, in either run.

    Attributes:
        step: the step about to run (0 before the first).
        model: the module the loop trains: the plain model in the BP run, the ``PCModule`` in
            the PC run (``pcm.eval()``, ``pcm.double()``, ``pcm.load_state_dict(...)``).
        original: the plain module in both runs (``model.eval()`` on the original, swapping a
            submodule, freezing a layer).
        optimizer: the run's optimizer; a callback may replace it (after adding parameters) or
            change its ``param_groups`` (learning-rate schedules).
        cast: applied to ``(inputs, target)`` before each micro-batch (set it after
            ``model.double()``).
    """

    step: int
    model: nn.Module
    original: nn.Module
    optimizer: torch.optim.Optimizer
    cast: Callable[[tuple, Any], tuple[tuple, Any]] | None = None

    def sgd(self, habits: Habits | None = None) -> torch.optim.Optimizer:
        """A fresh SGD over the original's parameters with the checker's habits (after
        adding or replacing parameters); also assigned to ``self.optimizer``."""
        h = habits or Habits()
        self.optimizer = torch.optim.SGD(
            self.original.parameters(), h.lr, h.momentum, weight_decay=h.weight_decay
        )
        return self.optimizer


def _eval_toggle(loop: Loop) -> None:
    """``train()`` on even steps, ``eval()`` on odd ones, through the module the loop trains."""
    loop.model.train(loop.step % 2 == 0)


def _freeze_first(loop: Loop) -> None:
    """Before step 1, freeze the first submodule that owns parameters; unfreeze it at step 2."""
    if loop.step in (1, 2):
        owner = next(
            (m for m in loop.original.modules() if any(True for _ in m.parameters(recurse=False))),
            None,
        )
        if owner is not None:
            owner.requires_grad_(loop.step == 2)


def _lr_decay(loop: Loop) -> None:
    """Halve every group's learning rate before each step but the first."""
    if loop.step > 0:
        for group in loop.optimizer.param_groups:
            group["lr"] *= 0.5


def _to_float64(loop: Loop) -> None:
    """Before step 1, ``.double()`` the module the loop trains and cast the batches."""
    if loop.step == 1:
        loop.model.double()
        loop.cast = _cast_float64


def _cast_float64(inputs: tuple, target: Any) -> tuple[tuple, Any]:
    def cast(t: Any) -> Any:
        return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return tuple(cast(t) for t in inputs), tree_map(cast, target)


#: Habits for any model, by name (``pccompile verify --train-steps N --habit NAME``): each a
#: callback of :func:`train_against_bp` that changes the model (or the optimizer) between steps.
HABITS: dict[str, Callable[[Loop], None]] = {
    "eval-toggle": _eval_toggle,
    "freeze-first": _freeze_first,
    "lr-decay": _lr_decay,
    "float64": _to_float64,
}


@dataclass
class DiffRow:
    """Differences after one micro-batch (``phase="grad"``) or one optimizer step (``"step"``).

    ``*_diff`` are the largest relative differences ``max|a - b| / max|b|`` over tensors (0.0
    when bitwise equal); ``where`` names the worst tensor.
    """

    step: int
    phase: str
    grad_diff: float = 0.0
    param_diff: float = 0.0
    buffer_diff: float = 0.0
    output_diff: float = 0.0  # learn's output against the BP forward's (grad rows)
    where: str = ""
    rng_equal: bool = True
    grad_presence: list[str] = field(default_factory=list)  # .grad None in one run only
    shared: list[tuple[str, str]] = field(default_factory=list)  # parameters sharing a .grad

    @property
    def worst(self) -> float:
        return max(self.grad_diff, self.param_diff, self.buffer_diff, self.output_diff)


@dataclass
class DiffReport:
    """What :func:`train_against_bp` saw; ``ok(tol)`` is the verdict.

    ``convert_changed`` lists model state (buffers, RNG, module attributes) that ``convert``
    itself changed: it must leave the model as it found it.
    """

    rule: str
    mode: str
    habits: Habits
    rows: list[DiffRow] = field(default_factory=list)
    convert_changed: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max((r.worst for r in self.rows), default=0.0)

    @property
    def bitwise(self) -> bool:
        return self.worst == 0.0 and not self.problems()

    def problems(self, tol: float = math.inf) -> list[str]:
        """Every reason this run is not BP's, at relative tolerance ``tol`` (0: bitwise)."""
        out = [f"convert changed the model: {c}" for c in self.convert_changed]
        for r in self.rows:
            at = f"step {r.step} ({r.phase})"
            if r.shared:
                out.append(f"{at}: parameters share one .grad tensor: {r.shared}")
            if r.grad_presence:
                out.append(f"{at}: .grad is None in one run only: {r.grad_presence}")
            if not r.rng_equal:
                out.append(f"{at}: the global RNG state differs from BP's")
            if r.worst > tol:
                out.append(
                    f"{at}: grad {r.grad_diff:.3g}, params {r.param_diff:.3g}, buffers "
                    f"{r.buffer_diff:.3g}, output {r.output_diff:.3g} (worst: {r.where})"
                )
        return out

    def ok(self, tol: float = 0.0) -> bool:
        return not self.problems(tol)

    def summary(self) -> str:
        h = self.habits
        return (
            f"{self.rule}/{self.mode}: {h.steps} steps x {h.accumulate} micro-batches, "
            f"worst relative difference {self.worst:.3g}"
            f"{' (bitwise)' if self.bitwise else ''}"
        )


def shared_grads(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs of parameters whose ``.grad`` tensors share memory."""
    seen: dict[tuple, str] = {}
    out = []
    for name, p in model.named_parameters():
        g = p.grad
        if g is None or g.numel() == 0:
            continue
        key = memory_of(g)
        if key in seen:
            out.append((seen[key], name))
        else:
            seen[key] = name
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if torch.equal(a, b):
        return 0.0
    if not (a.is_floating_point() or a.is_complex()):
        return math.inf
    a, b = a.detach().double(), b.detach().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    d = torch.where(both_nan, 0.0, (a - b).abs())
    if torch.isnan(d).any():
        return math.inf
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float(d.max()) / scale if scale > 0 else float(d.max())


def _worst(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for name, (a, b) in pairs.items():
        d = _rel(a, b)
        if d > worst:
            worst, where = d, name
    return worst, where


def train_against_bp(
    model: nn.Module,
    batches: Sequence[tuple[tuple, Any]],
    loss_fn: Callable | None,
    rule: Any = "zil",
    *,
    loss_for: Callable[[nn.Module], Callable] | None = None,
    habits: Habits = Habits(),
    train: bool = True,
    seed: int = 0,
    example_inputs: tuple | None = None,
    convert_options: dict | None = None,
    progress: Callable[[str], None] | None = None,
    callbacks: Sequence[Callable[[Loop], None]] = (),
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    **rule_options: Any,
) -> DiffReport:
    """Train a BP copy and a ``rule`` copy of ``model`` in lockstep and compare them.

    Args:
        model: the model; two deep copies are trained, ``model`` itself is left as it is.
        batches: ``(inputs_tuple, target)`` micro-batches, used in order (cycled).
        loss_fn: ``loss_fn(output, target) -> scalar``, for a loss that reads only the output.
        loss_for: for a loss that reads the model (an L2 penalty, a learnable temperature, an
            activation a forward hook captures): ``loss_for(copy) -> loss_fn`` is called once
            with each copy, before the PC copy is converted, so each copy's loss reads (and
            hooks) its own model. Give it instead of ``loss_fn``.
        rule: the PC rule (name or config); ``rule_options`` override its fields
            (``mode="faithful"`` ...).
        habits: the loop's habits (accumulation, clipping, momentum, ``set_to_none``).
        train: train mode (dropout, batch statistics) or eval mode.
        seed: seeds the global RNG before the first step; each micro-batch then starts both
            runs from the same RNG state.
        example_inputs: for ``convert`` (default: the first micro-batch's inputs).
        convert_options: extra ``pccompile.convert`` keywords (``leaf_modules=`` ...).
        progress: called with ``"training step k/N, micro-batch j/M"`` before each micro-batch.
        callbacks: ``fn(loop)`` called before every step in both runs, in order, from the same
            RNG state (:class:`Loop`): the habits that change the model between steps.
        optimizer: ``model -> optimizer`` (default: SGD with the habits' lr, momentum and
            weight decay), built once per run on the plain model (layer-wise groups...).

    Returns:
        A :class:`DiffReport`; ``report.ok(tol)`` is True when every ``.grad``, parameter and
        buffer is within relative ``tol`` of BP's after every micro-batch and step (``tol=0``:
        bitwise), the RNG states agree, no ``.grad`` is shared and convert changed nothing.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> data = [((torch.randn(5, 4),), torch.randn(5, 2)) for _ in range(2)]
        >>> rep = train_against_bp(net, data, torch.nn.functional.mse_loss, "zil")
        >>> assert rep.ok(1e-6), rep.problems(1e-6)
    """
    bp_model, pc_model = copy.deepcopy(model), copy.deepcopy(model)
    bp_model.train(train)
    pc_model.train(train)
    if (loss_fn is None) == (loss_for is None):
        raise ConfigError(
            "train_against_bp needs loss_fn (a loss on the output) or loss_for (copy -> its "
            "loss, for a loss that reads the model), exactly one of them."
        )
    losses = (loss_fn, loss_fn) if loss_for is None else (loss_for(bp_model), loss_for(pc_model))
    loss_bp, loss_pc = losses
    example = example_inputs if example_inputs is not None else batches[0][0]
    torch.manual_seed(seed)
    rng = torch.get_rng_state()
    pcm, changed = _convert_untouched(pc_model, example, rule, convert_options, rule_options)
    make = optimizer or (
        lambda m: torch.optim.SGD(
            m.parameters(), habits.lr, habits.momentum, weight_decay=habits.weight_decay
        )
    )
    loops = [Loop(0, bp_model, bp_model, make(bp_model)), Loop(0, pcm, pc_model, make(pc_model))]
    report = DiffReport(str(getattr(pcm.rule, "name", rule)), "", habits, convert_changed=changed)
    k = 0
    for step in range(habits.steps):
        rng_after = rng
        for loop in loops:  # the same habit, from the same random state, in both runs
            loop.step = step
            torch.set_rng_state(rng)
            for fn in callbacks:
                fn(loop)
            rng_after = torch.get_rng_state()
        rng = rng_after
        bp, pc = loops
        for j in range(habits.accumulate):
            if progress is not None:
                progress(f"training step {step + 1}/{habits.steps}, micro-batch {j + 1}")
            inputs, target = batches[k % len(batches)]
            k += 1
            if bp.cast is not None:
                inputs, target = bp.cast(inputs, target)
            torch.set_rng_state(rng)
            out = bp_model(*inputs)
            loss_bp(out, target).backward()
            rng_bp = torch.get_rng_state()
            torch.set_rng_state(rng)
            rep = pcm.learn(*inputs, target=target, loss_fn=loss_pc, **rule_options)
            report.mode = rep.mode
            row = _grad_row(step, bp_model, pc_model)
            row.rng_equal = torch.equal(torch.get_rng_state(), rng_bp)
            row.output_diff = _output_diff(rep.output, out)
            report.rows.append(row)
            rng = rng_bp
        for loop in loops:
            _optimizer_step(loop.original, loop.optimizer, habits)
        report.rows.append(_step_row(step, bp_model, pc_model))
    return report


def _output_diff(ours: Any, theirs: Any) -> float:
    """The largest relative difference between two (nested) outputs' tensors."""
    a, b = tree_flatten(ours)[0], tree_flatten(theirs)[0]
    if len(a) != len(b):
        return math.inf
    pairs = {
        str(i): (x.detach(), y.detach())
        for i, (x, y) in enumerate(zip(a, b))
        if isinstance(y, torch.Tensor) and isinstance(x, torch.Tensor)
    }
    return _worst(pairs)[0]


def _optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, habits: Habits) -> None:
    """The loop's habits at a step: clip the accumulated gradient, step, zero (maybe in place)."""
    if habits.clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), habits.clip)
    opt.step()
    opt.zero_grad(set_to_none=habits.set_to_none)


def _convert_untouched(
    model: nn.Module, example: Any, rule: Any, convert_options: dict | None, rule_options: dict
) -> tuple[Any, list[str]]:
    """``convert`` the model, and list what converting changed on it (nothing, if correct):
    its state dict, its plain Python attributes, the global RNG state (restored)."""
    rng0 = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = python_state(model, containers=True)
    pcm = convert(model, example, rule, **(convert_options or {}), **rule_options)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    changed += [k for k, v in python_state(model, containers=True).items() if attrs.get(k, v) != v]
    if not torch.equal(torch.get_rng_state(), rng0):
        changed.append("the global RNG state")
    torch.set_rng_state(rng0)
    return pcm, changed


def _grad_row(step: int, bp_model: nn.Module, pc_model: nn.Module) -> DiffRow:
    """The comparison after one micro-batch: which .grad is None in one run only, the largest
    .grad difference, and .grad tensors shared between parameters."""
    bp_params, pc_params = dict(bp_model.named_parameters()), dict(pc_model.named_parameters())
    row = DiffRow(step, "grad")
    row.grad_presence = [
        n for n in bp_params if (bp_params[n].grad is None) != (pc_params[n].grad is None)
    ]
    both = [n for n in bp_params if n not in row.grad_presence and bp_params[n].grad is not None]
    row.grad_diff, row.where = _worst({n: (pc_params[n].grad, bp_params[n].grad) for n in both})
    row.shared = shared_grads(pc_model)
    return row


def _step_row(step: int, bp_model: nn.Module, pc_model: nn.Module) -> DiffRow:
    """The comparison after an optimizer step: parameters and buffers."""
    bp_params, pc_params = dict(bp_model.named_parameters()), dict(pc_model.named_parameters())
    row = DiffRow(step, "step")
    row.param_diff, pw = _worst({n: (pc_params[n], bp_params[n]) for n in bp_params})
    bufs_pc, bufs_bp = dict(pc_model.named_buffers()), dict(bp_model.named_buffers())
    row.buffer_diff, bw = _worst({n: (bufs_pc[n], bufs_bp[n]) for n in bufs_bp})
    row.where = pw if row.param_diff >= row.buffer_diff else bw
    return row
