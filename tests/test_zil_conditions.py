"""Z-IL's two schedule conditions as options, so their breaking can be shown (docs/reproduction.md):
``ZIL(init="zero")`` (value nodes not started at the feed-forward pass) and
``ZIL(step_offset=k)`` (a vertex's weights read at step ``level + k``). Both must leave BP, and
setting them back must give BP again; the third and fourth conditions (gamma < 1, no levelling)
are tested in test_falsify.py."""

import pytest
from helpers import assert_matches_bp, compare_to_bp
from zoo import build

import pccompile
from pccompile import ConfigError, ExactnessError, UnreachedWarning


@pytest.mark.parametrize("name", ["mlp_post", "residual", "cnn"])
@pytest.mark.parametrize("opts", [{"init": "zero"}, {"step_offset": 1}, {"step_offset": 2}])
def test_breaking_a_schedule_condition_leaves_bp(name, opts):
    model, x, y, loss_fn = build(name)
    pcm = pccompile.convert(model, x)
    cmp = compare_to_bp(pcm, (x,), y, loss_fn, "zil", **opts)
    assert cmp.report.mode == "faithful"
    # every parameter moves off BP's gradient, not only some (measured: 0.16 ... 1.8e5)
    assert min(cmp.errors.values()) > 0.1, cmp.errors
    # and the same model, the same call with the condition restored, is BP (float64)
    restored = {k: ("forward" if k == "init" else 0) for k in opts}
    assert_matches_bp(pcm, (x,), y, loss_fn, "zil", tol=1e-12, mode="faithful", **restored)


def test_step_offset_reads_weights_later_and_runs_the_extra_steps():
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x)
    depth = pcm.plan.depth
    r = pcm.learn(x, target=y, loss_fn=loss_fn, rule=pccompile.ZIL(step_offset=2))
    assert r.steps == depth + 3
    # too few steps for the offset: the deepest weights are never read, and it is said so
    problems = pccompile.rules.rule_of(pccompile.ZIL()).exactness_problems(
        pcm.plan, pccompile.ZIL(step_offset=1, steps=depth + 1)
    )
    assert any("steps=" in p for p in problems) and any("step_offset=1" in p for p in problems)
    pcm.zero_grad()
    with pytest.warns(UnreachedWarning, match="never reaches"):  # and learn says so too
        pcm.learn(x, target=y, loss_fn=loss_fn, rule=pccompile.ZIL(step_offset=1, steps=depth + 1))
    deepest = [p for p in model.parameters() if p.grad is not None and not p.grad.any()]
    assert deepest, "the level-depth weights should be read after the last step, so stay zero"


def test_broken_conditions_are_named_and_refused_where_exactness_is_required():
    model, x, y, loss_fn = build("mlp_post")
    pcm = pccompile.convert(model, x)
    with pytest.raises(ExactnessError, match=r"init='zero'"):
        pcm.learn(x, target=y, loss_fn=loss_fn, rule=pccompile.ZIL(init="zero"), require_exact=True)
    with pytest.raises(ExactnessError, match=r"step_offset=1"):
        pcm.learn(x, target=y, loss_fn=loss_fn, rule="zil", step_offset=1, require_exact=True)
    with pytest.raises(ConfigError, match="mode='faithful'"):
        pccompile.ZIL(init="zero", mode="efficient")
    with pytest.raises(ConfigError, match="init must be"):
        pccompile.ZIL(init="noise")
    with pytest.raises(ConfigError, match="step_offset must be"):
        pccompile.ZIL(step_offset=-1)
    assert_matches_bp(pcm, (x,), y, loss_fn, "zil", tol=0.0)  # refused calls left no trace
