"""The habit sweep (issue 21): training loops that change the model after ``convert``.

Each habit is a callback (or an optimizer) that :func:`pccompile.testing.train_against_bp` applies
identically to the BP copy and to the PC copy between steps (SGD with momentum and weight
decay, clipping, two accumulated micro-batches per step, float64, ``zil``). The outcome of each
is asserted: ``bitwise`` (every ``.grad``, parameter, buffer, output and the RNG equal BP's
exactly), ``1e-12`` (within 1e-12 relative), or ``refused`` (a :class:`PCCompileError` whose
message names the cause and the fix). A silent divergence fails the test. The table in
docs/reliability.md is this list: ``python tests/test_habits.py`` prints it.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from pccompile.errors import PCCompileError
from pccompile.testing import Habits, Loop, train_against_bp


class Net(nn.Module):
    """One model with every kind of state a loop may change: layers, a ModuleList, a BatchNorm,
    a dropout module and a functional dropout rate, a temperature, a branch flag."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.act = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh()
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.extra, self.drop, self.head = nn.Linear(8, 8), nn.Dropout(0.0), nn.Linear(8, 3)
        self.temperature, self.p, self.use_extra = 1.0, 0.0, False

    def forward(self, x):
        h = self.act(self.bn(self.fc1(x)))
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        if self.use_extra:
            h = h + torch.tanh(self.extra(h))
        h = F.dropout(h, self.p, self.training)
        return self.head(self.drop(h)) / self.temperature


class Distilled(nn.Module):
    """A student and an EMA teacher (frozen, updated by the loop) whose output is mixed in."""

    def __init__(self):
        super().__init__()
        self.student, self.teacher = Net(), Net()
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)

    def forward(self, x):
        with torch.no_grad():
            t = self.teacher(x)
        return self.student(x) + 0.5 * t


class FrozenBN(Net):
    def train(self, mode: bool = True):
        super().train(mode)
        self.bn.eval()
        return self


class Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(-1, -2)


def at(step: int, fn: Callable[[Loop], None]) -> Callable[[Loop], None]:
    return lambda lp: fn(lp) if lp.step == step else None


def every(fn: Callable[[Loop], None]) -> Callable[[Loop], None]:
    return fn


def _seeded(fn):  # new modules: the same initial values in both runs
    def run(lp: Loop) -> None:
        torch.manual_seed(1234 + lp.step)
        fn(lp)

    return run


def _scheduler(make) -> Callable[[Loop], None]:
    """A torch LR scheduler on the run's optimizer, stepped before every step but the first."""

    def run(lp: Loop) -> None:
        sched = getattr(lp, "sched", None)
        if sched is None or sched.optimizer is not lp.optimizer:
            lp.sched = make(lp.optimizer)
        elif isinstance(lp.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            lp.sched.step(1.0)  # a plateau: the rate drops
        else:
            lp.sched.step()

    return run


def _set(path: str, value) -> Callable[[Loop], None]:
    def run(lp: Loop) -> None:
        *mods, name = path.split(".")
        obj = lp.original
        for m in mods:
            obj = getattr(obj, m)
        setattr(obj, name, value(lp.step) if callable(value) else value)

    return run


def _freeze(path: str, flag: bool) -> Callable[[Loop], None]:
    return lambda lp: lp.original.get_submodule(path).requires_grad_(flag)


def _double(lp: Loop) -> None:
    lp.original.double()
    lp.cast = lambda inputs, target: (tuple(t.double() for t in inputs), target)


def _pcm_double(lp: Loop) -> None:
    lp.model.double()
    lp.cast = lambda inputs, target: (tuple(t.double() for t in inputs), target)


def _ema(lp: Loop) -> None:
    with torch.no_grad():
        for t, s in zip(lp.original.teacher.parameters(), lp.original.student.parameters()):
            t.lerp_(s, 0.5)


def _checkpoint(lp: Loop) -> None:  # save at step 1, restore at step 3 (rewind)
    if lp.step == 1:
        lp.saved = copy.deepcopy(lp.original.state_dict())
    elif lp.step == 3:
        lp.model.load_state_dict(lp.saved)


def _assign_load(lp: Loop) -> None:
    sd = {k: v.clone() + 0.01 for k, v in lp.model.state_dict().items()}
    sd["bn.num_batches_tracked"] = lp.model.state_dict()["bn.num_batches_tracked"].clone()
    lp.model.load_state_dict(sd, assign=True)
    lp.sgd()


def _groups(model: nn.Module) -> torch.optim.Optimizer:
    head = list(model.head.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in head)]
    return torch.optim.SGD(
        [{"params": rest, "lr": 0.02}, {"params": head, "lr": 0.1}], momentum=0.9, weight_decay=1e-4
    )


def _add_group(lp: Loop) -> None:  # frozen at convert, unfrozen with its own param group
    lp.original.fc1.requires_grad_(True)
    lp.optimizer.add_param_group({"params": list(lp.original.fc1.parameters()), "lr": 0.01})


def _without_fc1(model: nn.Module) -> torch.optim.Optimizer:
    fc1 = list(model.fc1.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in fc1)]
    return torch.optim.SGD(rest, 0.05, momentum=0.9, weight_decay=1e-4)


def _frozen_fc1() -> nn.Module:
    m = Net()
    m.fc1.requires_grad_(False)
    return m


def _swap(lp: Loop) -> None:
    layers = lp.original.layers
    first, second = layers[0], layers[1]
    layers[0], layers[1] = second, first


def _hook_out(module, args, out):
    return out * 1.5


def _hook_in(module, args):
    return (args[0] * 0.5,)


def _with_handle(fn) -> Callable[[Loop], None]:
    def run(lp: Loop) -> None:
        if lp.step == 1:
            lp.handle = fn(lp)
        elif lp.step == 2:
            lp.handle.remove()

    return run


def _global_hook(lp: Loop) -> None:
    if lp.step == 1:
        lp.handle = torch.nn.modules.module.register_module_forward_hook(_global_scale)
    elif lp.step == 2:
        lp.handle.remove()


def _global_scale(module, args, out):
    return out * 1.25 if isinstance(module, nn.Linear) and module.out_features == 3 else None


def _drop_path_net() -> nn.Module:
    import timm

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
            self.drop_path = timm.layers.DropPath(0.0)

        def forward(self, x):
            x = x + self.drop_path(torch.tanh(self.fc1(x)))
            return self.head(x + self.drop_path(torch.tanh(self.fc2(x))))

    return Block()


@dataclass
class Case:
    name: str
    outcome: str  # "bitwise" | "1e-12" | "refused"
    callbacks: list = field(default_factory=list)
    make: Callable[[], nn.Module] = Net
    steps: int = 3
    set_to_none: bool = False
    optimizer: Callable | None = None
    convert: dict = field(default_factory=dict)
    slow: bool = False
    float32: bool = False  # the model starts in float32 (cast by a callback)
    needs: str = ""  # an optional package
    export: str = ""  # the outcome under capture="export" when it differs ("-": fx options)


S = torch.optim.lr_scheduler
CASES = [
    # ---- freezing
    Case(
        "freeze a layer (set_to_none=True)",
        "bitwise",
        [at(1, _freeze("fc1", False))],
        set_to_none=True,
    ),
    Case("freeze a layer (zero_grad in place)", "bitwise", [at(1, _freeze("fc1", False))]),
    Case(
        "freeze, then unfreeze",
        "bitwise",
        [at(1, _freeze("fc1", False)), at(2, _freeze("fc1", True))],
        steps=4,
    ),
    Case("frozen at convert, unfrozen", "bitwise", [at(1, _freeze("fc1", True))], make=_frozen_fc1),
    Case(
        "linear probe: freeze all but the head",
        "bitwise",
        [at(0, lambda lp: (lp.original.requires_grad_(False), lp.original.head.requires_grad_()))],
        set_to_none=True,
    ),
    Case(
        "freeze one bias only",
        "bitwise",
        [at(1, lambda lp: lp.original.fc1.bias.requires_grad_(False))],
        set_to_none=True,
    ),
    Case(
        "gradual unfreezing, a layer per step",
        "bitwise",
        [lambda lp: lp.original.layers[lp.step % 2].requires_grad_(lp.step > 0)],
        steps=3,
        slow=True,
    ),
    Case(
        "alternate freezing every step (GAN style)",
        "bitwise",
        [lambda lp: lp.original.head.requires_grad_(lp.step % 2 == 0)],
        steps=4,
        set_to_none=True,
    ),
    # ---- teachers and checkpoints
    Case(
        "EMA teacher inside the model, updated in place",
        "bitwise",
        [_ema],
        make=Distilled,
        export="refused",
    ),
    Case(
        "load_state_dict through the original",
        "bitwise",
        [at(2, lambda lp: lp.original.load_state_dict(Net().double().state_dict()))],
    ),
    Case("checkpoint and rewind through the PCModule", "bitwise", [_checkpoint], steps=4),
    Case("load_state_dict(assign=True) through the PCModule", "bitwise", [at(1, _assign_load)]),
    Case(
        "weights re-initialised in place (reset_parameters)",
        "bitwise",
        [at(1, _seeded(lambda lp: lp.original.layers[0].reset_parameters()))],
    ),
    Case(
        "param.data replaced (weight surgery)",
        "bitwise",
        [
            at(
                1,
                lambda lp: setattr(
                    lp.original.fc1.weight, "data", lp.original.fc1.weight.data * 0.5
                ),
            )
        ],
    ),
    Case(
        "zero_grad(set_to_none=True) mid-step",
        "bitwise",
        [at(1, lambda lp: lp.original.zero_grad(set_to_none=True))],
    ),
    # ---- optimizers and LR schedules
    Case("layer-wise LR groups", "bitwise", optimizer=_groups),
    Case(
        "unfrozen layer added as a new param group",
        "bitwise",
        [at(1, _add_group)],
        make=_frozen_fc1,
        optimizer=_without_fc1,
    ),
    Case(
        "LR changed by hand each step",
        "bitwise",
        [lambda lp: [g.__setitem__("lr", 0.05 / (1 + lp.step)) for g in lp.optimizer.param_groups]],
    ),
    Case("StepLR", "bitwise", [_scheduler(lambda o: S.StepLR(o, 1, 0.5))]),
    Case("MultiStepLR", "bitwise", [_scheduler(lambda o: S.MultiStepLR(o, [1, 2], 0.3))]),
    Case("ExponentialLR", "bitwise", [_scheduler(lambda o: S.ExponentialLR(o, 0.7))]),
    Case("CosineAnnealingLR", "bitwise", [_scheduler(lambda o: S.CosineAnnealingLR(o, 3))]),
    Case(
        "CosineAnnealingWarmRestarts",
        "bitwise",
        [_scheduler(lambda o: S.CosineAnnealingWarmRestarts(o, 2))],
    ),
    Case(
        "linear warm-up (LinearLR)",
        "bitwise",
        [_scheduler(lambda o: S.LinearLR(o, 0.1, total_iters=2))],
    ),
    Case(
        "warm-up then cosine (SequentialLR)",
        "bitwise",
        [
            _scheduler(
                lambda o: S.SequentialLR(
                    o,
                    [S.LinearLR(o, 0.1, total_iters=1), S.CosineAnnealingLR(o, 2)],
                    milestones=[1],
                )
            )
        ],
    ),
    Case("OneCycleLR", "bitwise", [_scheduler(lambda o: S.OneCycleLR(o, 0.1, total_steps=5))]),
    Case("CyclicLR", "bitwise", [_scheduler(lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=1))]),
    Case("PolynomialLR", "bitwise", [_scheduler(lambda o: S.PolynomialLR(o, 4, 2.0))]),
    Case("LambdaLR", "bitwise", [_scheduler(lambda o: S.LambdaLR(o, lambda k: 0.9**k))]),
    Case(
        "ReduceLROnPlateau",
        "bitwise",
        [_scheduler(lambda o: S.ReduceLROnPlateau(o, patience=0, factor=0.5))],
    ),
    # ---- modules swapped
    Case(
        "classifier head replaced",
        "bitwise",
        [
            at(
                1,
                _seeded(
                    lambda lp: (setattr(lp.original, "head", nn.Linear(8, 3).double()), lp.sgd())
                ),
            )
        ],
    ),
    Case(
        "a ModuleList entry replaced",
        "bitwise",
        [
            at(
                1,
                _seeded(
                    lambda lp: (
                        lp.original.layers.__setitem__(1, nn.Linear(8, 8).double()),
                        lp.sgd(),
                    )
                ),
            )
        ],
    ),
    Case("two ModuleList entries swapped", "bitwise", [at(1, _swap)]),
    Case(
        "a layer appended to the ModuleList",
        "bitwise",
        [
            at(
                1,
                _seeded(lambda lp: (lp.original.layers.append(nn.Linear(8, 8).double()), lp.sgd())),
            )
        ],
    ),
    Case(
        "a layer replaced by nn.Identity (layer drop)",
        "bitwise",
        [at(1, lambda lp: lp.original.layers.__setitem__(0, nn.Identity()))],
    ),
    Case(
        "activation module swapped (Tanh -> GELU)",
        "bitwise",
        [at(1, lambda lp: setattr(lp.original, "act", nn.GELU()))],
    ),
    # ---- parametrizations after convert
    Case(
        "weight_norm registered after convert",
        "bitwise",
        [
            at(
                1,
                lambda lp: (torch.nn.utils.parametrizations.weight_norm(lp.original.fc1), lp.sgd()),
            )
        ],
    ),
    Case(
        "orthogonal registered after convert",
        "bitwise",
        [
            at(
                1,
                lambda lp: (
                    torch.nn.utils.parametrizations.orthogonal(lp.original.layers[0]),
                    lp.sgd(),
                ),
            )
        ],
        slow=True,
    ),
    Case(
        "spectral_norm registered after convert",
        "bitwise",
        [
            at(
                1,
                lambda lp: (
                    torch.nn.utils.parametrizations.spectral_norm(lp.original.fc1),
                    lp.sgd(),
                ),
            )
        ],
        slow=True,
    ),
    Case(
        "custom parametrization registered, then removed",
        "bitwise",
        [
            at(
                1,
                lambda lp: (
                    parametrize.register_parametrization(
                        lp.original.layers[1], "weight", Symmetric()
                    ),
                    lp.sgd(),
                ),
            ),
            at(
                2,
                lambda lp: (
                    parametrize.remove_parametrizations(lp.original.layers[1], "weight"),
                    lp.sgd(),
                ),
            ),
        ],
        steps=4,
    ),
    # ---- dtype and device
    Case(
        "model.double() on the original after convert",
        "bitwise",
        [at(1, _double)],
        float32=True,
        export="refused",
    ),
    Case(
        "pcm.double() after convert",
        "bitwise",
        [at(1, _pcm_double)],
        float32=True,
        export="refused",
    ),
    Case(
        "pcm.to(float64), then pcm.float() back",
        "bitwise",
        [at(1, _pcm_double), at(2, lambda lp: (lp.model.float(), setattr(lp, "cast", None)))],
        float32=True,
        steps=4,
        slow=True,
        export="refused",
    ),
    # ---- dropout and stochastic depth
    Case("nn.Dropout.p raised each step", "bitwise", [_set("drop.p", lambda k: 0.1 * k)]),
    Case("functional dropout rate (an attribute) raised", "bitwise", [at(1, _set("p", 0.2))]),
    Case(
        "timm DropPath.drop_prob schedule (traced)",
        "bitwise",
        [_set("drop_path.drop_prob", lambda k: 0.1 * k)],
        make=_drop_path_net,
        needs="timm",
    ),
    Case(
        "timm DropPath schedule, DropPath a leaf",
        "bitwise",
        [_set("drop_path.drop_prob", lambda k: 0.1 * k)],
        make=_drop_path_net,
        needs="timm",
        convert={"leaf_modules": ["drop_path"]},
        steps=4,
        export="-",
    ),
    Case(
        "a rate changing every step for 10 steps",
        "refused",
        [_set("p", lambda k: 0.02 * k)],
        steps=10,
    ),
    # ---- train/eval
    Case("pcm.eval()", "bitwise", [at(1, lambda lp: lp.model.eval())]),
    Case("model.eval() on the original", "bitwise", [at(1, lambda lp: lp.original.eval())]),
    Case(
        "train/eval toggled every step",
        "bitwise",
        [lambda lp: lp.model.train(lp.step % 2 == 0)],
        steps=4,
    ),
    Case(
        "one BatchNorm put in eval (frozen statistics)",
        "bitwise",
        [at(1, lambda lp: lp.original.bn.eval())],
    ),
    Case(
        "train() override keeping BN frozen",
        "bitwise",
        [lambda lp: lp.model.train()],
        make=FrozenBN,
    ),
    Case(
        "BatchNorm momentum changed (None: cumulative)",
        "bitwise",
        [at(1, _set("bn.momentum", None))],
        export="refused",
    ),
    # ---- Python values read in forward
    Case("temperature annealed", "bitwise", [_set("temperature", lambda k: 1.0 / (1 + k))]),
    Case("branch flag switched on", "bitwise", [at(1, _set("use_extra", True))]),
    # ---- hooks
    Case(
        "forward hook on a child, registered then removed",
        "bitwise",
        [_with_handle(lambda lp: lp.original.fc1.register_forward_hook(_hook_out))],
        steps=4,
    ),
    Case(
        "forward pre-hook on a child",
        "bitwise",
        [at(1, lambda lp: lp.original.layers[0].register_forward_pre_hook(_hook_in))],
    ),
    Case(
        "root forward hook after convert",
        "bitwise",
        [at(1, lambda lp: lp.original.register_forward_hook(_hook_out))],
    ),
    Case(
        "root forward pre-hook after convert",
        "bitwise",
        [at(1, lambda lp: lp.original.register_forward_pre_hook(_hook_in))],
    ),
    Case("global module forward hook, then removed", "bitwise", [_global_hook], steps=4),
]


def _model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    m = case.make()
    return m.float() if case.float32 else m.double()


def _batches(case: Case):
    g = torch.Generator().manual_seed(1)
    dt = torch.float32 if case.float32 else torch.float64
    return [
        ((torch.randn(6, 6, generator=g, dtype=dt),), torch.randint(0, 3, (6,), generator=g))
        for _ in range(3)
    ]


def run(case: Case, capture: str = "auto") -> tuple[str, str]:
    """(outcome, detail): bitwise / 1e-12 / refused (the error's first line) / diverged."""
    options = {**case.convert, "capture": capture} if capture != "auto" else case.convert
    try:
        rep = train_against_bp(
            _model(case),
            _batches(case),
            F.cross_entropy,
            "zil",
            habits=Habits(steps=case.steps, set_to_none=case.set_to_none),
            callbacks=case.callbacks,
            optimizer=case.optimizer,
            convert_options=options,
        )
    except PCCompileError as exc:
        return "refused", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    if rep.ok(0.0):
        return "bitwise", ""
    if rep.ok(1e-12):
        return "1e-12", f"worst {rep.worst:.2g}"
    return "diverged", "; ".join(rep.problems(1e-12))[:500]


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_habit(case: Case):
    if case.needs:
        pytest.importorskip(case.needs)
    outcome, detail = run(case)
    assert outcome == case.outcome, detail
    if outcome == "refused":  # a clear error: the cause and the fix
        assert "leaf" in detail or "buffer" in detail or "raise" in detail, detail


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES if c.export != "-"])
def test_habit_under_export(case: Case):
    """The same habits with capture="export", which bakes every module's Python into ATen ops
    (BatchNorm's momentum, dropout rates, hooks on children): the guards matter most here."""
    if case.needs:
        pytest.importorskip(case.needs)
    outcome, detail = run(case, "export")
    assert outcome == (case.export or case.outcome), detail


@pytest.mark.slow
def test_habits_on_resnet18_float32_bitwise():
    """A real network, float32: the head replaced (fine-tuning), the stem frozen then unfrozen,
    train/eval toggled; bitwise."""
    torchvision = pytest.importorskip("torchvision")
    from pccompile.testing import HABITS

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    g = torch.Generator().manual_seed(3)
    data = [
        ((torch.randn(2, 3, 32, 32, generator=g),), torch.randint(0, 4, (2,), generator=g))
        for _ in range(2)
    ]

    def new_head(lp: Loop) -> None:
        if lp.step == 1:
            torch.manual_seed(5)
            lp.original.fc = nn.Linear(512, 4)
            lp.sgd()

    rep = train_against_bp(
        model,
        data,
        F.cross_entropy,
        "zil",
        habits=Habits(steps=3),
        callbacks=[HABITS["freeze-first"], HABITS["eval-toggle"], new_head],
    )
    assert rep.ok(0.0), rep.problems(0.0)


@pytest.mark.slow
@pytest.mark.parametrize("rule, options", [("fpa", {}), ("zil", {"mode": "faithful"})])
def test_habits_under_other_exact_rules(rule, options):
    """FPA and the faithful Z-IL schedule (which evaluates the loss again at every inference
    step) give every habit's outcome too."""
    wrong = []
    for case in CASES:
        if case.needs:
            pytest.importorskip(case.needs)
        try:
            rep = train_against_bp(
                _model(case),
                _batches(case),
                F.cross_entropy,
                rule,
                habits=Habits(steps=case.steps, set_to_none=case.set_to_none),
                callbacks=case.callbacks,
                optimizer=case.optimizer,
                convert_options=case.convert,
                **options,
            )
            outcome = "bitwise" if rep.ok(0.0) else "1e-12" if rep.ok(1e-12) else "diverged"
        except PCCompileError:
            outcome = "refused"
        if outcome != case.outcome:
            wrong.append((case.name, outcome))
    assert not wrong, wrong


def test_the_sweep_has_forty_habits():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


def test_the_sweep_would_see_a_silent_divergence(monkeypatch):
    """Falsification: with the guards disabled (every check passes) the same habits diverge."""
    from pccompile import guards

    real = guards.Guards.__init__

    def unguarded(self, model, reads):
        real(self, model, reads)
        self.check = lambda: True

    monkeypatch.setattr(guards.Guards, "__init__", unguarded)
    case = next(c for c in CASES if c.name == "temperature annealed")
    assert run(case)[0] == "diverged"


def _unguarded(case: Case, capture: str = "auto") -> tuple[str, str]:
    """The outcome with the guards disabled (the plan captured at convert keeps running)."""
    from pccompile import guards

    real = guards.Guards.__init__

    def init(self, model, reads):
        real(self, model, reads)
        self.check = lambda: True

    guards.Guards.__init__ = init
    try:
        return run(case, capture)
    except Exception as exc:  # a raw failure of the stale plan
        return "crashed", type(exc).__name__
    finally:
        guards.Guards.__init__ = real


if __name__ == "__main__":  # the table of docs/reliability.md
    print(
        "| habit | outcome (fx) | guards disabled (fx) | outcome (export) | guards disabled "
        "(export) |\n|---|---|---|---|---|"
    )
    counts: dict[str, int] = {}
    for c in CASES:
        outcome, detail = run(c)
        counts[outcome] = counts.get(outcome, 0) + 1
        shown = {"bitwise": "bitwise", "1e-12": f"within 1e-12 ({detail})"}.get(
            outcome, f"{outcome}: {detail.split('. ')[0]}"
        )
        before, why = _unguarded(c)
        before = f"{before} ({why.split(':')[0][:60]})" if before == "crashed" else before
        ex, ex_before = "-", "-"
        if c.export != "-":
            ex, why = run(c, "export")
            ex = f"{ex}: {why.split(':')[0]}" if ex == "refused" else ex
            ex_before, why = _unguarded(c, "export")
            if ex_before == "crashed":
                ex_before = f"crashed ({why})"
        print(f"| {c.name} | {shown} | {before} | {ex} | {ex_before} |", flush=True)
        if outcome != c.outcome:
            print(f"  (expected {c.outcome})", file=sys.stderr)
    print(counts, math.fsum(counts.values()), file=sys.stderr)
