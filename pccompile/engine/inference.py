"""The fused inference step of approximate PC (IL, iPC, MCPC), ePC's error inference, and
generative inference.

Reads: a compiled plan, its feed-forward pass, the target and loss, and a :class:`Setup` (which
value nodes are free and which clamped, each vertex's energy and precision, the output's
formulation). Writes: the value nodes' trajectory, the energy per step and, on request, the
parameter gradients of the energy (through :class:`~pccompile.engine.grads.Grads`).

One step evaluates every prediction ``mu_v = g_v(x_parents)`` from the current value nodes in one
pass over the plan, sums the energy ``F`` and takes all of ``dF/dx`` in one autograd call; the
value nodes then move down that gradient, by plain steps ``x -= gamma * dF/dx`` or by any
``torch.optim`` optimiser over them.
``dF/dx_v = pi_v dE_v/dx_v - sum_c J_{c,v}^T (pi_c dE_c/dmu_c)``: for squared errors,
``eps_v - sum_c J^T eps_c``, the PC update. Parameter gradients are taken only
where the rule reads them; value nodes are autograd leaves, so ``dF/dtheta_v`` involves vertex
``v``'s own prediction and error only: the local PC weight update.

Conventions (docs/pc.md): ``F`` sums per-sample energies over the batch,
``F = sum_v pi_v E_v(x_v, mu_v) + w * B * L(out, y)``, with ``L`` the loss function's batch mean
(PyTorch's default reduction), ``B`` the batch size and ``w`` the output precision; gradients are
written as ``p.grad = dF/dtheta / (w * B)``. So ``gamma`` acts per sample whatever the batch size,
a weight learning rate means what it means for BP, and at ``w -> 0`` the update approaches BP.

Event-driven skipping: from the feed-forward initialisation an error travels one vertex per step;
a vertex whose error cannot be non-zero yet contributes no energy term (and is not evaluated), and
a vertex reading only clamped inputs keeps its feed-forward prediction. Neither skip changes a
number. Another start (``x0``) or Langevin noise turns skipping off.

ePC (:func:`run_error_inference`) relaxes errors instead of values: one reverse pass over the
whole graph per step; :func:`local_param_grads` then reads every parameter's gradient from its
own vertex. :func:`energy_at` is ``F`` at given value nodes (the custom-loop hook).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..energies import squared_error
from ..errors import ConfigError, InputError
from ..frontend.annotate import is_float_tensor
from ..frontend.names import no_vertex_message
from .evaluate import FeedForward, call_vertex, rebuild
from .evaluate import _invoke as invoke
from .grads import Grads
from .plan import Plan, Vertex

__all__ = [
    "ON_STEP",
    "Setup",
    "Inference",
    "run_inference",
    "run_error_inference",
    "local_param_grads",
    "energy_at",
    "resolve",
    "batch_size",
    "unreached",
]

Tensor = torch.Tensor
NEVER = 1 << 30

#: Called as ``hook(s, steps)`` at the start of each eager inference step ``s`` (``0 .. steps``)
#: of :func:`run_inference` and :func:`run_error_inference`: ``PCModule.learn(progress=True)``
#: drives its progress bar from it. The compiled loop runs all steps in one call and never
#: calls it.
ON_STEP: ContextVar[Callable[[int, int], None] | None] = ContextVar("ON_STEP", default=None)


@dataclass
class Setup:
    """What one inference run is asked to do (validated by :func:`resolve`).

    output: ``"clamp"``: the output is clamped to the target; its energy is the loss on the
        prediction (no free output node). ``"free"``: the output vertex keeps a free value node
        with its own error, and the loss sits on that value node.
    output_precision: ``w``, the weight of the loss term.
    precision: vertex name -> ``pi_v`` (default 1).
    energies: vertex name -> ``E_v(x, mu)`` returning the batch-summed energy (default
        :func:`squared_error`); an ``nn.Module`` energy's own parameters are learned with the
        model's (their gradient is written like the weights').
    clamp: vertex name -> value(s) it is held at (partial clamping).
    free_inputs: positions of model inputs that become free value nodes (generative inference).
    value_optimizer: ``params -> torch.optim.Optimizer`` over the value nodes (default: plain
        steps of ``gamma``).
    log_energy: record ``F`` at every evaluation (a Python float each; False while a tracer
        records the loop, as the ONNX learn export does, where no value can be read).
    vertex_gamma: vertex name -> its step size (others: ``gamma``).
    vertex_steps: vertex name -> how many steps its value node moves (others: all).
    tol: stop once ``|F_s - F_(s-1)| <= tol * |F_(s-1)|``; that evaluation is then the last
        (the parameter gradients the rule reads at the last step are read there). None: run
        every step.
    """

    gamma: float = 0.1
    steps: int = 20
    output: Literal["clamp", "free"] = "clamp"
    output_precision: float = 1.0
    precision: Mapping[str, float] = field(default_factory=dict)
    energies: Mapping[str, Callable] = field(default_factory=dict)
    clamp: Mapping[str, Any] = field(default_factory=dict)
    free_inputs: tuple[int, ...] = ()
    value_optimizer: Callable | None = None
    log_energy: bool = True
    tol: float | None = None
    vertex_gamma: Mapping[str, float] = field(default_factory=dict)
    vertex_steps: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Inference:
    """The result of an inference run (:func:`run_inference`, ``PCModule.infer``).

    Attributes:
        values: vertex name -> its value node(s) at the end (a list of tensors per vertex).
        inputs: the model inputs at the end (free ones inferred, clamped ones as given).
        energy: ``F`` at every evaluation (``steps + 1`` of them).
        unreached: vertices with parameters the error never reached.
        output: the model output read from the final value nodes.
        compile_seconds: what ``torch.compile`` took in this call (``compile=True``, first call
            of a shape; 0 otherwise).
        silent: vertices with parameters that the error front reaches by the graph but whose
            error is still exactly zero at the end (numerically unreached: the error arriving
            there is below the dtype's resolution, so their gradient is zero).
        steps: inference steps run (fewer than asked when ``tol`` stopped it).
    """

    values: dict[str, list[Tensor]]
    inputs: list[Tensor]
    energy: list[float]
    unreached: list[str]
    output: Any = None
    compile_seconds: float = 0.0
    silent: list[str] = field(default_factory=list)
    steps: int | None = None


@dataclass(eq=False)
class _Net:
    """The plan seen by the approximate rules: which vertices hold free value nodes."""

    plan: Plan
    order: list[Vertex]  # hidden vertices in graph order
    predicted: set[int]  # vertices read straight from their prediction (clamped output)
    clamped: dict[int, list[Tensor]]
    free: list[Vertex]
    first_move: dict[int, int]  # m(v): first evaluation at which x_v may differ from x0
    first_error: dict[int, int]  # e(v): first evaluation at which eps_v may be non-zero
    input_slots: dict[int, int]  # free input position -> env slot


def resolve(plan: Plan, ff: FeedForward, setup: Setup) -> _Net:
    """Validate ``setup`` against the plan and say which value nodes are free, clamped or read
    from their prediction, and when the error front reaches each vertex."""
    order = [v for v in plan.vertices if v.kind != "output"]
    names = {v.name: v for v in order}
    tables = (
        (setup.precision, "precision"),
        (setup.energies, "energies"),
        (setup.vertex_gamma, "vertex_gamma"),
        (setup.vertex_steps, "vertex_steps"),
    )
    for table, what in tables:
        bad = sorted(set(table) - set(names))
        if bad:
            raise ConfigError(no_vertex_message(what, bad[0], list(names)))
    clamped: dict[int, list[Tensor]] = {}
    for name, value in setup.clamp.items():
        v = names.get(name)
        if v is None:
            raise ConfigError(no_vertex_message("clamp", name, list(names)))
        flat = [t for t in tree_flatten(value)[0] if is_float_tensor(t)]
        ref = ff.flat[v.vid]
        if len(flat) != len(ref) or any(a.shape != b.shape for a, b in zip(flat, ref)):
            raise InputError(
                f"clamp[{name!r}]: expected tensors of shapes {[tuple(t.shape) for t in ref]}, "
                f"got {[tuple(t.shape) for t in flat]}."
            )
        clamped[v.vid] = [t.detach().to(b.dtype) for t, b in zip(flat, ref)]
    predicted = set(plan.output.parents) if setup.output == "clamp" else set()
    predicted -= set(clamped)
    free = [v for v in order if v.vid not in predicted and v.vid not in clamped]
    input_slots = {}
    n_in = plan.n_inputs
    slots = plan.input_slots
    for k in setup.free_inputs:
        if not (isinstance(k, int) and 0 <= k < n_in):
            raise ConfigError(f"free_inputs: {k!r} is not an input position (0..{n_in - 1}).")
        input_slots[k] = slots[k]
    net = _Net(plan, order, predicted, clamped, free, {}, {}, input_slots)
    _reach(net)
    return net


def _children(plan: Plan) -> dict[int, list[Vertex]]:
    out: dict[int, list[Vertex]] = {v.vid: [] for v in plan.vertices}
    for v in plan.vertices:
        for p in [v.source] if v.kind == "identity" else v.parents:
            out[p].append(v)
    return out


def _reach(net: _Net) -> None:
    """When the error front can reach each vertex, from the feed-forward initialisation (a fixed
    point over the graph; see the module docstring). Writes ``first_move`` and
    ``first_error``."""
    plan = net.plan
    kids = _children(plan)
    free_in = set(net.input_slots.values())
    reads_free_input = {
        v.vid for v in net.order if any(s in free_in for s in v.input_slots)
    }  # a free input moves at step 1 (it starts where the caller put it)
    m = {v.vid: (0 if v.vid in net.clamped else NEVER) for v in net.order}
    e = {v.vid: (0 if v.vid in net.clamped else NEVER) for v in net.order}
    fb_in = NEVER  # first step any free input can receive feedback
    changed = True
    while changed:
        changed = False
        for v in net.order:
            parents = [v.source] if v.kind == "identity" else list(v.parents)
            moved = min(
                [m[p] for p in parents] + [1 + fb_in if v.vid in reads_free_input else NEVER]
            )
            if v.vid in net.predicted:
                new_m, new_e = moved, moved
            else:
                fb = min([_feedback(c, e, net) for c in kids[v.vid]] + [NEVER])
                new_e = min(e[v.vid], moved, m[v.vid])
                new_m = m[v.vid] if v.vid in net.clamped else min(m[v.vid], 1 + min(new_e, fb))
                if v.vid not in net.clamped:
                    new_e = min(new_e, new_m)
            if (new_m, new_e) != (m[v.vid], e[v.vid]):
                m[v.vid], e[v.vid], changed = new_m, new_e, True
        if free_in:
            readers = [v for v in net.order if v.vid in reads_free_input]
            new_fb = min([_feedback(v, e, net) for v in readers] + [NEVER])
            new_fb = min(new_fb, 0 if _output_reads_input(plan, free_in) else NEVER)
            if new_fb != fb_in:
                fb_in, changed = new_fb, True
    net.first_move, net.first_error = m, e


def _feedback(c: Vertex, e: dict[int, int], net: _Net) -> int:
    """First step at which the reader ``c`` passes feedback to the value nodes it reads."""
    if c.kind == "output" or c.vid in net.predicted:  # the loss reads it from step 0
        return 0
    return e[c.vid]


def _output_reads_input(plan: Plan, free_in: set[int]) -> bool:
    return any(s in free_in for s in plan.output.input_slots)


def unreached(net: _Net, first_error: dict[int, int], steps: int) -> list[str]:
    """Vertices with parameters whose error is still zero after ``steps`` steps (their
    parameters get a zero gradient), from the front's ``first_error`` step per vertex."""
    return [
        v.name
        for v in net.order
        if (v.params or v.param_leaves)
        and v.vid not in net.predicted
        and first_error[v.vid] > steps
    ]


def batch_size(inputs: list) -> int:
    """``B``: the first dimension of the first input that has one (1 otherwise)."""
    for t in inputs:
        if isinstance(t, Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 1


def run_inference(
    plan: Plan,
    ff: FeedForward,
    target: Any,
    loss_fn: Callable | None,
    setup: Setup,
    *,
    params_at: Callable[[int], bool] = lambda s: False,
    on_params: Callable[[int, Grads], None] | None = None,
    params_move: bool = False,
    trace: Any = None,
    event_driven: bool = True,
    x0: Mapping[int, list[Tensor]] | None = None,
    noise: Callable[[Tensor], Tensor] | None = None,
) -> Inference:
    """Run ``setup.steps`` fused inference steps from the feed-forward pass ``ff``.

    Args:
        params_at: evaluation -> whether the parameter gradients are taken there
            (IL: the last; iPC: every one).
        on_params: called with each evaluation's :class:`Grads` (already scaled to
            ``dF/dtheta / (w B)``); the caller writes or applies them.
        params_move: ``on_params`` changes the parameters (iPC): every prediction is then
            re-evaluated at every step.
        event_driven: skip what the error front has not reached (False: evaluate everything at
            every step; the same numbers, for tests).
        trace: a :class:`~pccompile.rules.report.Trace` to record the energy per vertex in.
        x0: vertex id -> where its free value node starts (default: the feed-forward pass; a
            vertex not named starts there too). Every error may then be non-zero from step 0,
            so nothing is skipped.
        noise: ``x -> xi`` added to every free value node after each step (MCPC's Langevin
            term); nothing is skipped either.
    """
    net = resolve(plan, ff, setup)
    reached = dict(net.first_error)
    if x0 is not None or noise is not None:
        event_driven = False
    if not event_driven:
        net.first_error = dict.fromkeys(net.first_error, 0)
        net.first_move = dict.fromkeys(net.first_move, 0)
    order = net.order
    recorded = [v for v in order if v.vid not in net.predicted]
    names = [(v.name, v.level) for v in recorded]
    inputs = [ff.env[s] for s in plan.input_slots]
    batch = batch_size(inputs)
    w = float(setup.output_precision)
    scale = 1.0 / (w * batch)
    energies = setup.energies
    extra = [p for fn in energies.values() if isinstance(fn, nn.Module) for p in fn.parameters()]
    extra = [p for p in extra if p.requires_grad]
    by_name = {v.vid: v.name for v in order}
    env = list(ff.env)
    xs: dict[int, list[Tensor]] = {}
    start = x0 or {}
    for v in net.free:
        xs[v.vid] = [t.detach().clone().requires_grad_() for t in start.get(v.vid, ff.flat[v.vid])]
    x_inputs = {}
    for k, slot in net.input_slots.items():
        x_inputs[k] = env[slot] = ff.env[slot].detach().clone().requires_grad_()
    movable = [t for v in net.free for t in xs[v.vid]] + list(x_inputs.values())
    opt = setup.value_optimizer(movable) if setup.value_optimizer is not None and movable else None
    energy_log: list[Tensor] = []
    params = _param_inputs(plan, ff)
    leaves: list = list(ff.leaves)
    for v in order:
        if v.vid in net.clamped:
            leaves[v.vid] = rebuild(ff.leaves[v.vid], net.clamped[v.vid])
        elif v.vid in xs:
            leaves[v.vid] = rebuild(ff.leaves[v.vid], xs[v.vid])
    reads_values = {v.vid: not event_driven or _reads_values(net, v) for v in order}
    tol = setup.tol
    silent: list[str] = []
    last_params = params_at(setup.steps)
    steps_run = setup.steps
    on_step = ON_STEP.get()
    for s in range(setup.steps + 1):
        if on_step is not None:
            on_step(s, setup.steps)
        want_params = params_at(s)
        final = s == setup.steps
        terms: list[Tensor] = []
        per_vertex: dict | None = {} if trace is not None and trace.per_vertex else None
        for v in order:
            vid = v.vid
            recompute = params_move or want_params or reads_values[vid] or tol is not None
            needs_term = net.first_error[vid] <= s and vid not in net.predicted
            if vid in net.predicted:
                mu = _predict(plan, ff, v, env, leaves, recompute)
                leaves[vid] = rebuild(ff.leaves[vid], mu)
                continue
            if not needs_term:
                continue
            mu = _predict(plan, ff, v, env, leaves, recompute)
            x = net.clamped.get(vid) or xs[vid]
            fn = energies.get(by_name[vid], squared_error)
            pi = setup.precision.get(by_name[vid], 1.0)
            term = sum(fn(a, b) for a, b in zip(x, mu))
            terms.append(term if pi == 1.0 else pi * term)
            if per_vertex is not None:
                per_vertex[vid] = [(a - b).detach() for a, b in zip(x, mu)]
            # (log_energy=False: a tracer records the loop and no tensor value can be read)
            if final and setup.log_energy and (v.params or v.param_leaves) and not _differs(x, mu):
                silent.append(v.name)
        output = plan.read_output(env, leaves)
        loss = None
        if target is not None and loss_fn is not None:
            loss = loss_fn(output, target).reshape(())
            terms.append((w * batch) * loss)
        if not terms:  # nothing clamped: the feed-forward pass is the minimum (F = 0)
            energy_log.append(torch.zeros(()))
            continue
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        energy_log.append(total.detach())
        if tol is not None and not final and s > 0:
            prev, now = float(energy_log[-2]), float(energy_log[-1])
            if abs(now - prev) <= tol * abs(prev):  # converged: this evaluation is the last
                final, steps_run = True, s
                want_params = want_params or last_params
        if per_vertex is not None:
            errors = [per_vertex.get(v.vid, []) for v in recorded]
            trace.record(names, errors, 0.0 if loss is None else w * batch * float(loss.detach()))
        moving = [] if final else _moving(net, xs, x_inputs, s, setup.vertex_steps)
        wrt = moving + (params + extra if want_params else [])
        if wrt:
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
            if want_params and on_params is not None:
                on_params(s, _param_grads(plan, params, extra, grads[len(moving) :], scale))
            if moving:
                _move(moving, grads[: len(moving)], _gammas(net, xs, moving, setup), opt, noise)
        if final:
            break
    values = {by_name[vid]: [t.detach() for t in x] for vid, x in xs.items()}
    values.update({by_name[vid]: list(x) for vid, x in net.clamped.items()})
    return Inference(
        values=values,
        inputs=[x_inputs[k].detach() if k in x_inputs else t for k, t in enumerate(inputs)],
        energy=[float(e) for e in energy_log] if setup.log_energy else [],
        unreached=unreached(net, reached, setup.steps),
        output=plan.read_output(env, leaves),
        silent=silent,
        steps=steps_run,
    )


def _differs(x: list[Tensor], mu: list[Tensor]) -> bool:
    """Whether any element of the error ``x - mu`` is non-zero."""
    with torch.no_grad():
        return any(bool((a != b).any()) for a, b in zip(x, mu))


def run_error_inference(
    plan: Plan,
    ff: FeedForward,
    target: Any,
    loss_fn: Callable,
    setup: Setup,
    *,
    error_optimizer: Callable | None = None,
    trace: Any = None,
) -> tuple[dict[int, list[Tensor]], dict[int, list[Tensor]], list[float]]:
    """ePC's inference: relax the errors, not the values (Goemaere et al. 2025).

    Every free vertex's value is reparameterised as ``z_v = g_v(z_parents) + eps_v``; the
    ``eps_v`` start at zero (so ``z`` starts at the feed-forward pass) and take ``setup.steps``
    gradient steps ``eps -= gamma * dF/deps`` (or ``error_optimizer``'s) on
    ``F = sum_v pi_v E_v(z_v, g_v(z_parents)) + w B L(out(z), y)``. The ``z`` are functions of
    every upstream ``eps``, so ``dF/deps`` is one reverse pass over the whole graph per step
    (autograd through the reparameterised forward: memory at BP's scale). This is by
    definition not local; the weight update that follows is (the rule's final local
    evaluation at the states ``z``, :func:`run_inference` with ``x0=``).

    Returns ``(z, eps, energy)``: vertex id -> its final states ``z_v`` and errors ``eps_v``
    (detached), and ``F`` at each of the ``steps + 1`` evaluations.
    """
    net = resolve(plan, ff, setup)
    if net.input_slots:
        raise ConfigError(
            "ePC relaxes the errors of the vertices; free inputs (generative inference) have no "
            "error variable. Use rule='il' for free_inputs."
        )
    order = net.order
    recorded = [v for v in order if v.vid not in net.predicted]
    names = [(v.name, v.level) for v in recorded]
    batch = batch_size([ff.env[s] for s in plan.input_slots])
    w = float(setup.output_precision)
    energies = setup.energies
    eps = {v.vid: [torch.zeros_like(t).requires_grad_() for t in ff.flat[v.vid]] for v in net.free}
    flat = [t for e in eps.values() for t in e]
    opt = error_optimizer(flat) if error_optimizer is not None and flat else None
    env, leaves = _clamped_state(ff, net)
    energy_log: list[float] = []
    states: dict[int, list[Tensor]] = {}
    on_step = ON_STEP.get()
    for s in range(setup.steps + 1):
        if on_step is not None:
            on_step(s, setup.steps)
        last = s == setup.steps
        terms: list[Tensor] = []
        per_vertex: dict[int, list[Tensor]] = {}
        with torch.set_grad_enabled(not last):
            for v in order:
                vid = v.vid
                mu = _predict(plan, ff, v, env, leaves, recompute=True)
                if vid in net.predicted:
                    leaves[vid] = rebuild(ff.leaves[vid], mu)
                    continue
                fn = energies.get(v.name, squared_error)
                pi = setup.precision.get(v.name, 1.0)
                if vid in net.clamped:
                    x = net.clamped[vid]
                    term = sum(fn(a, b) for a, b in zip(x, mu))
                    errs = [(a - b).detach() for a, b in zip(x, mu)]
                else:
                    z = [m + e for m, e in zip(mu, eps[vid])]
                    leaves[vid] = rebuild(ff.leaves[vid], z)
                    if last:
                        states[vid] = [t.detach() for t in z]
                    if fn is squared_error:  # 1/2 ||z - mu||^2 is 1/2 ||eps||^2, read directly
                        term = sum(0.5 * (e * e).sum() for e in eps[vid])
                    else:
                        term = sum(fn(a, b) for a, b in zip(z, mu))
                    errs = [e.detach() for e in eps[vid]]
                terms.append(term if pi == 1.0 else pi * term)
                per_vertex[vid] = errs
            out = plan.read_output(env, leaves)
            loss_term = (w * batch) * loss_fn(out, target).reshape(())
            total = loss_term
            for t in terms:
                total = total + t
        energy_log.append(float(total.detach()))
        if trace is not None and trace.per_vertex:
            errors = [per_vertex.get(v.vid, []) for v in recorded]
            trace.record(names, errors, float(loss_term.detach()))
        if last or not flat:
            continue
        grads = torch.autograd.grad(total, flat, allow_unused=True)
        _move(flat, grads, setup.gamma, opt)
    errors = {vid: [t.detach() for t in e] for vid, e in eps.items()}
    return states, errors, energy_log


def energy_at(
    plan: Plan,
    ff: FeedForward,
    target: Any,
    loss_fn: Callable,
    setup: Setup,
    values: Mapping[int, list[Tensor]],
) -> Tensor:
    """``F`` with the free value nodes at ``values`` (vertex id -> tensors; a free vertex not
    given sits at the feed-forward pass), every prediction re-evaluated from them: a
    differentiable function of the values and the parameters (the custom-loop hook,
    :mod:`pccompile.rules.custom`)."""
    net = resolve(plan, ff, setup)
    batch = batch_size([ff.env[s] for s in plan.input_slots])
    w = float(setup.output_precision)
    env, leaves = _clamped_state(ff, net)
    xs = {v.vid: list(values.get(v.vid, ff.flat[v.vid])) for v in net.free}
    for vid, x in xs.items():
        leaves[vid] = rebuild(ff.leaves[vid], x)
    total = None
    for v in net.order:
        mu = _predict(plan, ff, v, env, leaves, recompute=True)
        if v.vid in net.predicted:
            leaves[v.vid] = rebuild(ff.leaves[v.vid], mu)
            continue
        fn = setup.energies.get(v.name, squared_error)
        pi = setup.precision.get(v.name, 1.0)
        x = net.clamped.get(v.vid) or xs[v.vid]
        term = sum(fn(a, b) for a, b in zip(x, mu))
        term = term if pi == 1.0 else pi * term
        total = term if total is None else total + term
    if target is not None and loss_fn is not None:
        out = plan.read_output(env, leaves)
        term = (w * batch) * loss_fn(out, target).reshape(())
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def _clamped_state(ff: FeedForward, net: _Net) -> tuple[list, list]:
    """Fresh copies of the feed-forward environment and vertex leaves, the clamped vertices'
    leaves holding their clamp values: where every re-evaluation of the energy starts."""
    leaves: list = list(ff.leaves)
    for vid, value in net.clamped.items():
        leaves[vid] = rebuild(ff.leaves[vid], value)
    return list(ff.env), leaves


def local_param_grads(
    plan: Plan,
    ff: FeedForward,
    target: Any,
    loss_fn: Callable,
    setup: Setup,
    states: Mapping[int, list[Tensor]],
    errors: Mapping[int, list[Tensor]],
) -> Grads:
    """Every parameter's gradient from its own vertex at the given state: ``dF/dtheta / (w B)``
    with every prediction ``mu_v = g_v(z_parents)`` read from the (detached) states, so a vertex's
    gradient involves only its prediction and its error.

    For squared-error vertices the error is taken as given (``errors``: ``dE/dmu_v = -eps_v``),
    not recomputed as ``z_v - mu_v``: an error far below ``mu_v``'s magnitude survives (in the
    state form ``(mu + eps) - mu`` it would round away). Other energies read ``E_v(z_v, mu_v)``.
    """
    net = resolve(plan, ff, setup)
    batch = batch_size([ff.env[s] for s in plan.input_slots])
    w = float(setup.output_precision)
    env, leaves = _clamped_state(ff, net)
    for vid, z in states.items():
        leaves[vid] = rebuild(ff.leaves[vid], list(z))
    terms: list[Tensor] = []
    for v in net.order:
        vid = v.vid
        mu = _predict(plan, ff, v, env, leaves, recompute=True)
        if vid in net.predicted:
            leaves[vid] = rebuild(ff.leaves[vid], mu)
            continue
        fn = setup.energies.get(v.name, squared_error)
        pi = setup.precision.get(v.name, 1.0)
        if fn is squared_error and vid in errors:  # d/dtheta of E = -J^T eps, eps as given
            term = sum(-(m * e).sum() for m, e in zip(mu, errors[vid]))
        else:
            x = net.clamped.get(vid) or states[vid]
            term = sum(fn(a, b) for a, b in zip(x, mu))
        terms.append(term if pi == 1.0 else pi * term)
    out = plan.read_output(env, leaves)
    total = (w * batch) * loss_fn(out, target).reshape(())
    for t in terms:
        total = total + t
    params = _param_inputs(plan, ff)
    extra = [
        p for fn in setup.energies.values() if isinstance(fn, nn.Module) for p in fn.parameters()
    ]
    extra = [p for p in extra if p.requires_grad]
    if not params + extra:
        return Grads()
    grads = torch.autograd.grad(total, params + extra, allow_unused=True)
    return _param_grads(plan, params, extra, grads, 1.0 / (w * batch))


def _reads_values(net: _Net, v: Vertex) -> bool:
    """Whether ``mu_v`` must be evaluated from the current value nodes: it reads a vertex (a
    free one needs the feedback through ``mu_v``, a clamped one differs from its feed-forward
    value) or a free input. A vertex reading only clamped inputs keeps its feed-forward
    prediction, evaluated once."""
    if v.kind == "identity" or v.parents:
        return True
    free_in = set(net.input_slots.values())
    return any(x in free_in for x in v.input_slots)


def _predict(plan, ff, v, env, leaves, recompute: bool) -> list[Tensor]:
    """``mu_v`` from the current value nodes, or the feed-forward one (detached) when nothing
    it reads has moved and no parameter gradient is taken."""
    if v.kind == "identity":
        src = leaves[v.source]
        return [t for t in tree_flatten(src)[0] if is_float_tensor(t)]
    if not recompute:
        return [t.detach() for t in ff.mu[v.vid]]
    with torch.enable_grad():
        if v.rule.replays_rng or v.rule.protects_buffers:
            state = ff.state.get(v.vid)
            out = call_vertex(plan, v, env, leaves, recompute=True, state=state, devices=ff.devices)
        elif v.call is not None:  # a pure op on one value node: load and call in one
            out = v.call(env, leaves)
        else:  # a pure op: called directly
            args, kwargs = v.load(env, leaves)
            out = invoke(v.node, v.module, args, kwargs)
    if isinstance(out, Tensor):
        return [out]
    return [t for t in tree_flatten(out)[0] if is_float_tensor(t)]


def _moving(net: _Net, xs: dict, x_inputs: dict, s: int, held: Mapping) -> list[Tensor]:
    """The value nodes whose gradient may be non-zero at evaluation ``s`` (and that still move:
    a vertex named in ``held`` (``vertex_steps``) moves in its first ``held[name]`` steps)."""
    out = [
        t
        for v in net.free
        if net.first_move[v.vid] <= s + 1 and s < held.get(v.name, NEVER)
        for t in xs[v.vid]
    ]
    return out + list(x_inputs.values())


def _gammas(net: _Net, xs: dict, moving: list[Tensor], setup: Setup) -> float | list[float]:
    """The step size of each moving tensor (one number when no vertex has its own)."""
    if not setup.vertex_gamma:
        return setup.gamma
    of = {id(t): setup.vertex_gamma.get(v.name, setup.gamma) for v in net.free for t in xs[v.vid]}
    return [of.get(id(t), setup.gamma) for t in moving]


def _param_inputs(plan: Plan, ff: FeedForward) -> list[Tensor]:
    """The tensors parameter gradients are taken for: the parameters the vertices read
    directly, then the parameter transforms' leaves (carried to their parameters by
    :meth:`Grads.finish`)."""
    direct = list(dict.fromkeys(p for v in plan.vertices for p in v.params))
    return direct + [ff.env[s] for s in plan.boundary]


def _param_grads(plan: Plan, params: list, extra: list, grads: tuple, scale: float) -> Grads:
    out = Grads()
    n_direct = len(params) - len(plan.boundary)
    for p, g in zip(params[:n_direct], grads):
        if g is not None:
            out.add_param(p, g, scale)
    for s, g in zip(plan.boundary, grads[n_direct : len(params)]):
        if g is not None:
            out.add_leaf(s, g, scale)
    for p, g in zip(extra, grads[len(params) :]):
        if g is not None:
            out.add_param(p, g, scale)
    return out


def _move(xs: list[Tensor], grads: tuple, gamma: float, opt, noise=None) -> None:
    with torch.no_grad():
        if opt is not None:
            for x, g in zip(xs, grads):
                x.grad = None if g is None else g
            opt.step()
        else:
            steps = gamma if isinstance(gamma, list) else [gamma] * len(xs)
            for x, g, step in zip(xs, grads, steps):
                if g is not None:
                    x.sub_(g, alpha=step)
        if noise is not None:
            for x in xs:
                x.add_(noise(x))
