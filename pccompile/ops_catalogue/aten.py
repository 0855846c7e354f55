"""The ATen part of the catalogue: every ATen overload the ``torch.export`` front end produces
for the source models of :mod:`.aten_sources` (eval and train mode), with its declared rule
(:func:`pccompile.ops.aten.aten_rule`) and a single-op check derived from one real call site,
or the reason it has none.

Collecting (slow: every source model is built and converted, about a minute on two cores):
:func:`collect` converts each source with ``capture="export"``, runs its graph once and keeps,
per overload, which sources use it in which mode and role, and one vertex call site: the
recorded argument values of that node (the most learnable arguments first, then train mode,
where dropout draws and batch norm updates its statistics, then the fewest elements). The
result is cached in ``aten_sites.pt`` (about 400 kB)
(written by ``tools/gen_ops_table.py --collect-aten``); :func:`aten_catalogue` reads the cache,
so tests need no source model. A ``slow`` test collects afresh and compares.

The check (:func:`check_aten`): the call site becomes a model whose forward calls the overload
itself with the recorded arguments, where every floating tensor that came from a vertex or an
input is a model input times a scale parameter of ones, parameters (and parameter transforms)
are parameters of the case, integer and other tensors computed from the inputs are clamped
model inputs, and the rest (buffers, masks, constants of the pass) are buffers holding the
recorded values. Converted with ``capture="export"``, the overload must be a vertex; the
forward must equal the plain call; and :func:`pccompile.testing.train_against_bp` must find
``zil`` equal to ``bp`` within ``TOL`` in float64 in both schedules (every ``.grad``, parameter
and buffer after every micro-batch and step, and the global RNG state: stochastic ops replay
BP's masks from the same seed).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch._ops import OpOverload
from torch.utils._pytree import tree_flatten

from ..api import convert
from ..frontend.annotate import complete_inputs, is_float_tensor
from ..ops.aten import aten_name, aten_rule, is_aten
from ..ops.names import NO_GRADIENT_NAMES
from ..preserve import preserved
from ..testing import Habits, train_against_bp
from .aten_sources import SOURCES, build_source
from .base import weighted_sum

__all__ = [
    "ATEN_CACHE",
    "AtenEntry",
    "AtenResult",
    "Site",
    "aten_catalogue",
    "aten_failures",
    "build_case",
    "check_aten",
    "collect",
    "load_sites",
    "overload",
    "save_sites",
]

ATEN_CACHE = Path(__file__).with_name("aten_sites.pt")
TOL = 1e-12  # float64, relative (as the other single-op checks)
HABITS = Habits(steps=2, accumulate=2)
MODES = ("efficient", "faithful")
_DATA_ROLES = ("vertex", "struct", "input", "identity")  # a float argument from these: an input


# ------------------------------------------------------------------------------ call sites
@dataclass(frozen=True)
class Site:
    """One recorded call of an overload in a source model: its arguments, with every tensor
    replaced by ``{"slot": k}`` and kept in ``tensors[k]`` with its role in ``roles[k]``
    (``input``: float data, scaled; ``data``: other tensors computed from the inputs, clamped;
    ``param``: a parameter or parameter transform; ``const``: buffers and constants)."""

    op: str
    source: str
    train: bool
    node: str
    args: tuple
    kwargs: dict
    tensors: tuple[torch.Tensor, ...]
    roles: tuple[str, ...]

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def overload(name: str) -> OpOverload:
    """``"aten.linear.default"`` -> ``torch.ops.aten.linear.default``."""
    ns, op, over = name.split(".")
    return getattr(getattr(getattr(torch.ops, ns), op), over)


def _slot_role(arg: fx.Node, value: Any) -> str:
    info = arg.meta["pc"]
    if info.role in ("param", "param_op"):
        return "param"
    if is_float_tensor(value) and info.role in _DATA_ROLES:
        return "input"
    if info.role == "input" or info.from_input:
        return "data"
    return "const"


class _SiteRecorder(fx.Interpreter):
    """Runs the converted graph once and keeps every vertex's arguments, as they were when the
    vertex ran (cloned: a batch norm updates its running statistics in place)."""

    def __init__(self, gm: fx.GraphModule, source: str, train: bool):
        super().__init__(gm, garbage_collect_values=False)
        self.source, self.train = source, train
        self.sites: list[Site] = []

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and is_aten(n.target) and n.meta["pc"].role == "vertex":
            self.sites.append(self._site(n))
        return super().run_node(n)

    def _site(self, n: fx.Node) -> Site:
        slots: dict[fx.Node, int] = {}
        tensors: list[torch.Tensor] = []
        roles: list[str] = []

        def mark(a: fx.Node) -> Any:
            value = self.env[a]
            if not isinstance(value, torch.Tensor):
                return value  # a recorded Python number
            if a not in slots:
                slots[a] = len(tensors)
                tensors.append(value.detach().clone())
                roles.append(_slot_role(a, value))
            return {"slot": slots[a]}

        args = _plain(fx.node.map_arg(n.args, mark))
        kwargs = _plain(fx.node.map_arg(n.kwargs, mark))
        return Site(
            str(n.target),
            self.source,
            self.train,
            n.name,
            args,
            kwargs,
            tuple(tensors),
            tuple(roles),
        )


def _plain(a: Any) -> Any:
    """FX's immutable containers as plain tuples, lists and dicts (for ``weights_only`` loads)."""
    if isinstance(a, dict):
        return {k: _plain(v) for k, v in a.items()}
    if isinstance(a, tuple):
        return tuple(_plain(x) for x in a)
    if isinstance(a, list):
        return [_plain(x) for x in a]
    return a


def collect_source(name: str, train: bool) -> tuple[list[tuple[str, str, bool]], list[Site]]:
    """Convert the source ``name`` in one mode; return every ATen node as ``(overload, role,
    rewritten from in-place)`` and every vertex's call site."""
    model, inputs = build_source(name)
    model.train(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sources' own deprecation and tracing warnings
        pcm = convert(model, inputs, capture="export")
    gm = pcm.plan.gm
    seen = [
        (str(n.target), n.meta["pc"].role, "pc_inplace_of" in n.meta)
        for n in gm.graph.nodes
        if n.op == "call_function" and is_aten(n.target)
    ]
    rec = _SiteRecorder(gm, name, train)
    flat = complete_inputs(gm, inputs)
    with preserved(gm, flat, training=train), torch.no_grad():
        rec.run(*flat)
    return seen, rec.sites


def _better(a: Site, b: Site | None) -> bool:
    """The site exercising the most Jacobians (learnable slots) first; then train mode (dropout
    draws, batch norm updates its statistics); then the fewest elements; then the earlier
    source."""

    def key(s: Site) -> tuple:
        learnable = sum(r in ("input", "param") for r in s.roles)
        return (-learnable, not s.train, s.numel, list(SOURCES).index(s.source))

    return b is None or key(a) < key(b)


def collect(sources: Iterable[str] = tuple(SOURCES), log: Any = None) -> dict:
    """Convert every source in eval and train mode; the cache's content (see the module
    docstring). A source that does not convert is recorded with its error."""
    ops: dict[str, dict] = {}
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in sources:
        for train in (False, True):
            where = f"{name}/{'train' if train else 'eval'}"
            t0 = time.perf_counter()
            try:
                seen, sites = collect_source(name, train)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                failures[where] = f"{type(exc).__name__}: {first}"
                if log:
                    log(f"{where}: FAILS {failures[where]}")
                continue
            timings[where] = time.perf_counter() - t0
            for op, role, inplace in seen:
                rec = ops.setdefault(op, {"uses": {}, "inplace": False, "site": None})
                key = (name, "train" if train else "eval", role)
                rec["uses"][key] = rec["uses"].get(key, 0) + 1
                rec["inplace"] |= inplace
            for s in sites:
                rec = ops[s.op]
                best = None if rec["site"] is None else Site(**rec["site"])
                if _better(s, best):
                    rec["site"] = s.as_dict()
            if log:
                log(f"{where}: {len(seen)} ATen nodes, {len(sites)} vertices")
    for rec in ops.values():
        rec["uses"] = [[*k, n] for k, n in sorted(rec["uses"].items())]
    return {
        "versions": _versions(),
        "sources": list(sources),
        "failures": failures,
        "seconds": timings,
        "ops": dict(sorted(ops.items())),
    }


def _versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}
    for mod in ("transformers", "timm", "torchvision"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:
            out[mod] = "missing"
    return out


def save_sites(data: dict, path: Path = ATEN_CACHE) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_sites(path: Path = ATEN_CACHE) -> dict:
    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------ the catalogue
@dataclass
class AtenEntry:
    """One ATen overload: its declared rule, where it is used, and a call site or a reason."""

    name: str
    op: OpOverload
    kind: str
    differentiable: bool
    uses: list[tuple[str, str, str, int]]  # (source, "eval"|"train", role, node count)
    inplace: bool = False  # some source wrote it in place (rewritten to this overload)
    site: Site | None = None
    reason: str = ""

    @property
    def sources(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for src, mode, _, _ in self.uses:
            out.setdefault(src, set()).add(mode)
        return out

    @property
    def roles(self) -> set[str]:
        return {role for _, _, role, _ in self.uses}


def _reason(e: AtenEntry) -> str:
    roles = e.roles
    if not e.differentiable:
        base = aten_name(e.op).lstrip("_")
        return (
            "no gradient (named in NO_GRADIENT_NAMES: its result depends on its arguments' "
            "shapes only, or is a random draw): a constant of the pass, computed once in the "
            "feed-forward pass"
            if base in NO_GRADIENT_NAMES
            else "declared without gradient: a constant of the pass"
        )
    if roles <= {"meta"}:
        return (
            "a constant of the pass in every source model (no gradient path: sizes, masks, "
            "positions, integer results)"
        )
    if "param_op" in roles and "vertex" not in roles:
        return (
            "only transforms parameters in these models (part of the reading vertex's θ, "
            "differentiated by autograd); never a vertex"
        )
    return f"never a vertex in these models (roles: {', '.join(sorted(roles))})"


@functools.cache
def aten_catalogue(path: Path = ATEN_CACHE) -> tuple[AtenEntry, ...]:
    """Every ATen overload in the cached collection, with its rule read now (not cached)."""
    data = load_sites(path)
    entries = []
    for name, rec in data["ops"].items():
        op = overload(name)
        rule = aten_rule(op)
        e = AtenEntry(
            name,
            op,
            rule.kind,
            rule.differentiable,
            [tuple(u) for u in rec["uses"]],
            rec["inplace"],
            Site(**rec["site"]) if rec["site"] is not None else None,
        )
        if e.site is None:
            e.reason = _reason(e)
        entries.append(e)
    return tuple(entries)


@functools.cache
def aten_failures(path: Path = ATEN_CACHE) -> dict[str, str]:
    """Source model/mode pairs that did not convert when the cache was collected."""
    return dict(load_sites(path)["failures"])


# ------------------------------------------------------------------------------ the check
class AtenCase(nn.Module):
    """``forward(*x)``: the site's overload called with its recorded arguments; see the module
    docstring for what becomes an input, a parameter or a buffer."""

    def __init__(self, site: Site):
        super().__init__()
        self.op = overload(site.op)
        self.site_args, self.site_kwargs = site.args, site.kwargs
        self.scales = nn.ParameterList()
        self.weights = nn.ParameterList()
        self.slots: list[tuple[str, Any, int]] = []  # (how, where, scale index)
        n_inputs = 0
        for k, (t, role) in enumerate(zip(site.tensors, site.roles, strict=True)):
            if role == "input":
                self.scales.append(nn.Parameter(torch.ones_like(t)))
                self.slots.append(("scaled", n_inputs, len(self.scales) - 1))
                n_inputs += 1
            elif role == "data":
                self.slots.append(("input", n_inputs, -1))
                n_inputs += 1
            elif role == "param":
                self.weights.append(nn.Parameter(t.clone()))
                self.slots.append(("param", len(self.weights) - 1, -1))
            else:
                self.register_buffer(f"const{k}", t.clone())
                self.slots.append(("const", f"const{k}", -1))
        self.train(site.train)

    def run(self, *xs: torch.Tensor) -> Any:
        values = []
        for how, i, s in self.slots:
            if how == "scaled":
                values.append(xs[i] * self.scales[s])
            elif how == "input":
                values.append(xs[i])
            elif how == "param":
                values.append(self.weights[i])
            else:
                values.append(getattr(self, i))

        def fill(a: Any) -> Any:
            if isinstance(a, dict) and set(a) == {"slot"}:
                return values[a["slot"]]
            if isinstance(a, (list, tuple)):
                return type(a)(fill(x) for x in a)
            return a

        return self.op(*fill(self.site_args), **fill(self.site_kwargs))


@functools.cache
def _case_class(arity: int) -> type[AtenCase]:
    """AtenCase with ``forward(self, x0, ..., x{arity-1})``."""
    names = ", ".join(f"x{i}" for i in range(arity))
    ns: dict = {}
    exec(f"def forward(self, {names}):\n    return self.run({names})\n", ns)
    return type(f"AtenCase{arity}", (AtenCase,), {"forward": ns["forward"]})


def build_case(site: Site) -> tuple[AtenCase, tuple[torch.Tensor, ...]]:
    """The site's single-op model and its inputs (the recorded values)."""
    inputs = tuple(
        t.clone() for t, r in zip(site.tensors, site.roles, strict=True) if r in ("input", "data")
    )
    return _case_class(len(inputs))(site), inputs


@dataclass
class AtenResult:
    """What one check measured: the worst relative difference to BP per schedule."""

    worst: dict[str, float] = field(default_factory=dict)
    vertices: int = 0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def check_aten(e: AtenEntry, modes: tuple[str, ...] = MODES) -> AtenResult:
    """The single-op check of ``e``'s call site (see the module docstring); raises
    ``AssertionError`` naming what differs."""
    _require(e.site is not None, f"{e.name} has no call site: {e.reason}")
    site = e.site
    model, xs = build_case(site)
    pcm = convert(model, xs, capture="export")
    targets = [v.node.target for v in pcm.plan.vertices if v.kind == "op"]
    _require(e.op in targets, f"{e.name} is not a vertex of the converted case:\n{pcm.code}")
    torch.manual_seed(0)
    out = pcm(*xs)
    model2, _ = build_case(site)
    torch.manual_seed(0)
    ref = model2(*xs)
    flat_o, flat_r = tree_flatten(out)[0], tree_flatten(ref)[0]
    _require(len(flat_o) == len(flat_r), f"{len(flat_o)} outputs, expected {len(flat_r)}")
    for a, b in zip(flat_o, flat_r, strict=True):
        same = torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b
        if isinstance(b, torch.Tensor) and b.is_floating_point() and not same:
            same = bool(torch.isnan(a).eq(torch.isnan(b)).all()) and torch.equal(
                a.nan_to_num(), b.nan_to_num()
            )
        _require(same, f"the converted forward differs from the plain call of {e.name}")
    result = AtenResult(vertices=len(targets))
    for mode in modes:
        with warnings.catch_warnings():
            # faithful: behind the error front, moved value nodes may leave an op's domain or
            # meet a masked (-inf) score; a RuntimeWarning says so; the comparison still asserts
            warnings.simplefilter("ignore", RuntimeWarning)
            rep = train_against_bp(
                build_case(site)[0],
                [(xs, None)],
                weighted_sum,
                "zil",
                habits=HABITS,
                train=site.train,
                mode=mode,
                convert_options={"capture": "export"},
            )
        problems = rep.problems(TOL)
        _require(not problems, f"{e.name} ({mode}): zil differs from bp: " + "; ".join(problems))
        result.worst[mode] = rep.worst
    return result
