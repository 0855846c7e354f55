"""Falsifying tests: break one condition of Z-IL/FPA and the match with BP must break, in the
way the theory predicts. These would pass only if the PC machinery is real."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from helpers import compare_to_bp
from zoo import build

import pccompile
from pccompile import ConfigError, ExactnessError
from pccompile.errors import UnreachedWarning


def _level_of_params(pcm):
    return {p: d["level"] for _, d in pcm.graph.nodes(data=True) for p in d["params"]}


def test_gamma_half_scales_level_l_updates_by_half_to_the_l():
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x)
    cmp = compare_to_bp(pcm, (x,), y, loss_fn, "zil", gamma=0.5)
    levels = _level_of_params(pcm)
    assert sorted(set(levels.values())) == [1, 3, 5]
    for name, level in levels.items():
        torch.testing.assert_close(cmp.pc[name], 0.5**level * cmp.bp[name], rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [2, 4])
def test_too_few_steps_leave_deep_parameters_at_zero(steps):
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x)
    with pytest.warns(UnreachedWarning, match="never reaches"):  # as IL warns
        cmp = compare_to_bp(pcm, (x,), y, loss_fn, "zil", steps=steps)
    for name, level in _level_of_params(pcm).items():
        if level < steps:
            assert cmp.errors[name] < 1e-12, name
        else:
            assert torch.count_nonzero(cmp.pc[name]) == 0, name  # zero, not None
            assert cmp.bp[name].abs().sum() > 0


def test_zil_without_levelling_does_not_match_on_a_resnet():
    torch.manual_seed(0)
    model = tvm.resnet18(weights=None, num_classes=4).double().eval()
    x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 3])
    unleveled = pccompile.convert(model, x, level=False)
    assert not unleveled.plan.leveled
    with pytest.raises(ConfigError, match="leveled"):
        unleveled.learn(x, target=y, loss_fn=F.cross_entropy, mode="efficient")
    bad = compare_to_bp(unleveled, (x,), y, F.cross_entropy, "zil")
    assert bad.report.mode == "faithful"
    # Only parameters below a skip edge are hit: the layers after the last skip stay exact.
    assert bad.errors["fc.weight"] < 1e-10
    assert max(bad.errors.values()) > 0.1
    leveled = pccompile.convert(model, x)
    good = compare_to_bp(leveled, (x,), y, F.cross_entropy, "zil", mode="faithful")
    assert max(good.errors.values()) < 1e-9


def test_fpa_with_fewer_steps_than_depth_does_not_match():
    model, x, y, loss_fn = build("residual")
    pcm = pccompile.convert(model, x, rule="fpa", level=False)
    depth = pcm.plan.depth
    short = compare_to_bp(pcm, (x,), y, loss_fn, "fpa", steps=depth - 1)
    assert short.report.mode == "faithful" and max(short.errors.values()) > 0.01
    enough = compare_to_bp(pcm, (x,), y, loss_fn, "fpa", steps=depth, mode="faithful")
    assert max(enough.errors.values()) < 1e-10


def test_fpa_small_gamma_converges_only_slowly():
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x, rule="fpa")
    few = compare_to_bp(pcm, (x,), y, loss_fn, "fpa", gamma=0.1, steps=20)
    many = compare_to_bp(pcm, (x,), y, loss_fn, "fpa", gamma=0.1, steps=400)
    assert max(few.errors.values()) > 0.05
    assert max(many.errors.values()) < 1e-6


def test_require_exact_refuses_non_exact_settings():
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x)
    with pytest.raises(ExactnessError, match="gamma=0.5"):
        pcm.learn(x, target=y, loss_fn=loss_fn, gamma=0.5, require_exact=True)
    with pytest.raises(ExactnessError, match="steps=2"):
        pcm.learn(x, target=y, loss_fn=loss_fn, steps=2, require_exact=True)
    assert all(p.grad is None for p in pcm.parameters())
    pcm.learn(x, target=y, loss_fn=loss_fn, require_exact=True)
    assert all(p.grad is not None for p in pcm.parameters())
