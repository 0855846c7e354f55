"""Z-IL and FPA equal BP on the hand-written zoo: every parameter, float64 and float32,
train and eval mode."""

import pytest
import torch
from helpers import assert_matches_bp, compare_to_bp
from zoo import ZOO, build

import pccompile


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule", ["zil", "fpa"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_matches_bp(name, rule, dtype, train):
    model, x, y, loss_fn = build(name, dtype)
    model.train(train)
    pcm = pccompile.convert(model, x, rule=rule)
    cmp = assert_matches_bp(pcm, (x,), y, loss_fn, rule)
    assert cmp.report.mode == "efficient"
    assert cmp.report.loss > 0


@pytest.mark.parametrize("name", sorted(ZOO))
def test_faithful_zil_equals_efficient(name):
    """The synchronous schedule (every value node every step) gives the same updates."""
    model, x, y, loss_fn = build(name)
    model.train()
    pcm = pccompile.convert(model, x)
    cmp = assert_matches_bp(pcm, (x,), y, loss_fn, "zil", mode="faithful")
    assert cmp.report.mode == "faithful" and cmp.report.steps == pcm.plan.depth + 1


@pytest.mark.parametrize("name", ["residual", "multi_output", "dict_output"])
def test_fpa_needs_no_levelling(name):
    model, x, y, loss_fn = build(name)
    pcm = pccompile.convert(model, x, rule="fpa", level=False)
    assert not pcm.plan.leveled
    assert_matches_bp(pcm, (x,), y, loss_fn, "fpa")
    assert_matches_bp(pcm, (x,), y, loss_fn, "fpa", mode="faithful")


def test_forward_equals_original():
    for name in ZOO:
        model, x, *_ = build(name)
        pcm = pccompile.convert(model, x)
        torch.manual_seed(1)
        out = pcm(x)
        torch.manual_seed(1)
        ref = model(x)
        assert type(out) is type(ref)
        flat_o = torch.utils._pytree.tree_flatten(out)[0]
        flat_r = torch.utils._pytree.tree_flatten(ref)[0]
        assert all(torch.equal(a, b) for a, b in zip(flat_o, flat_r)), name


def test_parameters_are_shared_and_state_dict_keys_match():
    model, x, *_ = build("batchnorm")
    pcm = pccompile.convert(model, x)
    assert list(pcm.state_dict()) == list(model.state_dict())
    for (n1, p1), (n2, p2) in zip(pcm.named_parameters(), model.named_parameters()):
        assert n1 == n2 and p1 is p2


def test_dropout_masks_match_bp_with_same_seed():
    """With the same seed, PC replays exactly BP's dropout masks (a different seed would not)."""
    model, x, y, loss_fn = build("dropout")
    model.train()
    pcm = pccompile.convert(model, x)
    same = compare_to_bp(pcm, (x,), y, loss_fn, "zil", seed=3)
    assert same.worst[1] < 1e-10
