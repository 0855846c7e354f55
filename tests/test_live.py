"""A live model: the training loop changes the model after ``convert`` (issue 21, class 1).

Every case trains a BP copy and a PC copy of one model with ``train_against_bp``
(3 steps x 2 accumulated micro-batches, SGD with momentum and weight decay, clipping) while a
callback changes the model between steps, identically in both runs; parameters, buffers, the
output, the RNG and every ``.grad`` (value and None-ness) must stay BP's: 1e-12 relative in
float64 (the runs are bitwise in practice). Each of these failed silently before the guards
(:mod:`pccompile.guards`): the plan traced at conversion kept running.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile.testing import Habits, Loop, train_against_bp

TOL = 1e-12


class MLP(nn.Module):
    def __init__(self, d: int = 6, h: int = 8, k: int = 3):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, k)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class Tempered(MLP):
    """Python values read in forward: a temperature and a flag switching a branch on."""

    def __init__(self):
        super().__init__()
        self.temperature, self.use_extra = 1.0, False
        self.extra = nn.Linear(8, 8)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        if self.use_extra:
            h = h + torch.tanh(self.extra(h))
        return self.head(torch.tanh(self.fc2(h))) / self.temperature


class RootState(MLP):
    """A root parameter and a root buffer (registered on the PCModule itself)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.register_buffer("offset", torch.zeros(3))

    def forward(self, x):
        return super().forward(x) * self.scale + self.offset


class BNNet(nn.Module):
    """Its own forward reads ``self.training`` (functional dropout): traced into the graph."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.head = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(F.dropout(torch.tanh(self.bn(self.fc1(x))), 0.2, self.training))


class FrozenBN(BNNet):
    """The fine-tuning idiom: ``train()`` keeps the BatchNorm in eval (frozen statistics)."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.bn.eval()
        return self


def batches(n: int = 3, d: int = 6, k: int = 3, b: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            (torch.randn(b, d, generator=g, dtype=torch.float64),),
            torch.randint(0, k, (b,), generator=g),
        )
        for _ in range(n)
    ]


def check(model, callbacks=(), habits: Habits | None = None, data=None, **kw):
    """Train BP and Z-IL side by side with the callbacks; assert BP's numbers throughout."""
    rep = train_against_bp(
        model,
        data or batches(),
        F.cross_entropy,
        "zil",
        habits=habits or Habits(),
        callbacks=callbacks,
        **kw,
    )
    assert rep.ok(TOL), rep.problems(TOL)
    return rep


def at(step: int, fn):
    """A callback running ``fn(loop)`` before step ``step`` only."""
    return lambda loop: fn(loop) if loop.step == step else None


# ---------------------------------------------------------------- parameters frozen/unfrozen
def test_freezing_after_convert_leaves_grad_as_bp_does():
    # set_to_none=True: BP leaves the frozen layer's .grad None and SGD skips it
    cb = at(1, lambda lp: lp.original.fc1.requires_grad_(False))
    check(MLP().double(), [cb], Habits(steps=3, set_to_none=True))
    check(MLP().double(), [cb], Habits(steps=3, set_to_none=False))


def test_frozen_at_convert_then_unfrozen_gets_a_gradient():
    model = MLP().double()
    model.fc1.requires_grad_(False)
    check(model, [at(1, lambda lp: lp.original.fc1.requires_grad_(True))])


# ---------------------------------------------------------------- modules and tensors replaced
def _new_head(lp: Loop) -> None:
    torch.manual_seed(7)  # the same new head in both runs
    lp.original.head = nn.Linear(8, 3).double()
    lp.sgd()


def test_replaced_classifier_head_is_the_one_trained():
    check(MLP().double(), [at(1, _new_head)])


def test_reassigned_root_parameter_and_buffer():
    def reassign(lp: Loop) -> None:
        lp.original.scale = nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
        lp.original.offset = torch.full((3,), 0.5, dtype=torch.float64)
        lp.sgd()

    check(RootState().double(), [at(1, reassign)])


def test_parametrization_registered_then_removed_after_convert():
    # registered in the callback: each run's module gets its own Parametrized class (two deep
    # copies of a parametrized module share one, and removing deletes its property)
    from torch.nn.utils import parametrize

    def register(lp: Loop) -> None:
        torch.nn.utils.parametrizations.weight_norm(lp.original.fc2)
        lp.sgd()

    def remove(lp: Loop) -> None:
        parametrize.remove_parametrizations(lp.original.fc2, "weight")
        lp.sgd()

    check(MLP().double(), [at(1, register), at(2, remove)], Habits(steps=4))


# ---------------------------------------------------------------- Python values read in forward
def test_annealed_temperature():
    def anneal(lp: Loop) -> None:
        lp.original.temperature = 1.0 / (1 + lp.step)

    check(Tempered().double(), [anneal])


def test_flag_switching_a_branch_on():
    check(Tempered().double(), [at(1, lambda lp: setattr(lp.original, "use_extra", True))])


def test_timm_drop_path_schedule():
    timm = pytest.importorskip("timm")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
            self.drop_path = timm.layers.DropPath(0.0)

        def forward(self, x):
            x = x + self.drop_path(torch.tanh(self.fc1(x)))
            return self.head(x + self.drop_path(torch.tanh(self.fc2(x))))

    def schedule(lp: Loop) -> None:
        lp.original.drop_path.drop_prob = 0.1 * lp.step

    check(Block().double(), [schedule])


# ---------------------------------------------------------------- training flags
def test_eval_called_on_the_original():
    check(BNNet().double(), [at(1, lambda lp: lp.original.eval())])


def test_train_override_keeps_batchnorm_frozen():
    # pcm.train() in the PC run, model.train() in the BP run: the user's override must run
    check(FrozenBN().double().train(), [lambda lp: lp.model.train()])


def test_train_override_frozen_batchnorm_at_convert():
    check(FrozenBN().double().train())


def test_eval_train_toggle_on_the_converted_module():
    check(BNNet().double(), [lambda lp: lp.model.train(lp.step % 2 == 0)], Habits(steps=4))


# ---------------------------------------------------------------- root hooks
def _double_output(module, args, output):
    return output * 2


def test_root_forward_hook_registered_after_convert():
    check(MLP().double(), [at(1, lambda lp: lp.original.register_forward_hook(_double_output))])


class SizeBranch(MLP):
    """torch.fx cannot trace the size-dependent ``if``: ``capture='auto'`` uses torch.export."""

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        if h.shape[0] > 1:
            h = h * 0.5
        return self.head(torch.tanh(self.fc2(h)))


def test_root_forward_hook_registered_before_an_export_capture():
    model = SizeBranch().double()
    model.register_forward_hook(_double_output)
    x = batches()[0][0][0]
    pcm = pccompile.convert(model, x)
    torch.testing.assert_close(pcm(x), model(x), rtol=0, atol=0)
    check(model)


def test_root_forward_pre_hook_after_convert():
    def shift(module, args):
        return (args[0] + 1.0,)

    check(MLP().double(), [at(1, lambda lp: lp.original.register_forward_pre_hook(shift))])


# ---------------------------------------------------------------- dtype and state_dict via pcm
def test_pcm_double_keeps_root_buffers_the_models():
    model = RootState()
    pcm = pccompile.convert(model, torch.randn(4, 6))
    pcm.double()
    assert pcm.offset is model.offset and model.offset.dtype == torch.float64
    sd = pcm.state_dict()
    sd["offset"] = torch.full((3,), 3.0, dtype=torch.float64)
    pcm.load_state_dict(sd)
    assert torch.equal(model.offset, sd["offset"])
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(pcm(x), model(x), rtol=0, atol=0)


def _to_double(lp: Loop) -> None:
    lp.model.double()
    lp.cast = lambda inputs, target: (tuple(t.double() for t in inputs), target)


def test_pcm_double_during_training_equals_bp():
    data = [((x.float(),), y) for (x,), y in batches()]
    check(RootState(), [at(1, _to_double)], data=data)


def test_pcm_to_dtype_then_state_dict_load():
    def to_and_load(lp: Loop) -> None:
        lp.model.to(torch.float64)
        lp.cast = lambda inputs, target: (tuple(t.double() for t in inputs), target)
        sd = lp.model.state_dict()
        sd["offset"] = sd["offset"] + 0.25
        lp.model.load_state_dict(sd)

    data = [((x.float(),), y) for (x,), y in batches()]
    check(RootState(), [at(1, to_and_load)], data=data)


# ---------------------------------------------------------------- guard bookkeeping
def test_a_failed_guard_recaptures_logs_and_counts(caplog):
    model = Tempered().double()
    pcm = pccompile.convert(model, batches()[0][0][0])
    (x,), y = batches()[0]
    assert pcm.learn(x, target=y, loss_fn=F.cross_entropy).recaptures == 0
    model.temperature = 2.0
    with caplog.at_level(logging.INFO, logger="pccompile.guards"):
        rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy)
    assert rep.recaptures == 1
    assert any("temperature" in r.getMessage() for r in caplog.records), caplog.text
    model.temperature = 1.0  # the first state's plan is still cached: no new capture
    assert pcm.learn(x, target=y, loss_fn=F.cross_entropy).recaptures == 1


def test_a_value_changing_every_step_hits_the_recapture_limit():
    model = Tempered().double()
    pcm = pccompile.convert(model, batches()[0][0][0])
    (x,), y = batches()[0]
    with pytest.raises(pccompile.errors.RecaptureLimitError, match="temperature"):
        for k in range(50):
            model.temperature = 1.0 + k
            pcm.learn(x, target=y, loss_fn=F.cross_entropy)


def test_a_loop_that_changes_nothing_only_checks():
    model = BNNet().double()
    (x,), y = batches()[0]
    pcm = pccompile.convert(model, x)
    for k in range(6):  # train/eval toggled: two states, each captured once
        pcm.train(k % 2 == 0)
        rep = pcm.learn(x, target=y, loss_fn=F.cross_entropy)
        pcm(x)
    assert rep.recaptures == 1 and len(pcm._pc_plans.entries) == 2


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda m: m.fc1.requires_grad_(False), "requires_grad of parameter fc1.weight"),
        (lambda m: setattr(m, "head", nn.Linear(8, 3).double()), "submodule head (replaced)"),
        (lambda m: m.bn.eval(), "training flag of 'bn'"),
        (lambda m: m.fc1.register_forward_hook(_double_output), "forward hooks of 'fc1'"),
        (lambda m: m.float(), "dtype/device of parameter fc1.weight (was torch.float64"),
    ],
)
def test_the_log_line_names_the_failed_guard(change, named, caplog):
    model = BNNet().double()
    (x,), y = batches()[0]
    pcm = pccompile.convert(model, x)
    change(model)
    with caplog.at_level(logging.INFO, logger="pccompile.guards"):
        pcm.learn(x.to(next(model.parameters()).dtype), target=y, loss_fn=F.cross_entropy)
    assert named in caplog.text, caplog.text
