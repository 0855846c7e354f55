"""ATen op coverage: every ATen overload the torch.export front end produces for the catalogue's
source models (tiny Hugging Face transformers, torchvision, timm and the idioms of
test_export.py, each in eval and train mode) is declared, and checked single-op in both
schedules from one recorded call site, or has a recorded reason.

The call sites are cached in pccompile/ops_catalogue/aten_sites.pt (building and converting
every source model takes about a minute); ``test_the_cache_is_what_the_source_models_give``
(slow) collects them afresh and compares. Regenerate with
``tools/gen_ops_table.py --collect-aten``.
"""

from __future__ import annotations

import pytest

import pccompile.ops.registry as registry
from pccompile.ops import OpRule
from pccompile.ops_catalogue import aten_catalogue, aten_failures, check_aten
from pccompile.ops_catalogue.aten import TOL, collect, load_sites
from pccompile.ops_catalogue.aten_sources import SOURCES


def _checked():
    return [e for e in aten_catalogue() if e.site is not None]


def _entry(name: str):
    (e,) = [e for e in aten_catalogue() if e.name == name]
    return e


@pytest.mark.parametrize("entry", _checked(), ids=lambda e: e.name)
def test_aten_single_op_zil_equals_bp_in_both_schedules(entry):
    result = check_aten(entry)  # raises, naming the difference, beyond TOL
    assert set(result.worst) == {"efficient", "faithful"}
    assert all(w <= TOL for w in result.worst.values())


def test_every_aten_overload_is_declared_and_checked_or_has_a_reason():
    entries = aten_catalogue()
    assert len({e.name for e in entries}) == len(entries)
    for e in entries:
        assert e.kind in ("pure", "stochastic", "stateful"), e.name
        assert (e.site is None) == bool(e.reason), e.name
        # every overload that is a vertex somewhere has a call site to check
        assert ("vertex" in e.roles) == (e.site is not None), e.name
        assert e.sources, e.name
    # a floor, not an exact count: the set follows the installed torch and model libraries
    assert len(_checked()) >= 40
    kinds = {e.name: (e.kind, e.differentiable) for e in entries}
    assert kinds["aten.dropout.default"] == ("stochastic", True)
    assert kinds["aten.scaled_dot_product_attention.default"] == ("stochastic", True)
    assert kinds["aten.batch_norm.default"] == ("stateful", True)
    assert kinds["aten.randn_like.default"] == ("stochastic", False)
    assert kinds["aten.linear.default"] == ("pure", True)


def test_stochastic_and_stateful_sites_exercise_what_makes_them_so():
    """The chosen call sites draw (train-mode dropout, attention dropout) and update running
    statistics, so the checks replay masks and protect buffers rather than pass trivially."""
    dropout = _entry("aten.dropout.default").site
    assert dropout.train and dropout.args[1] > 0 and dropout.args[2] is True
    sdpa = _entry("aten.scaled_dot_product_attention.default").site
    assert sdpa.train and sdpa.args[4] > 0  # dropout_p
    bn = _entry("aten.batch_norm.default").site
    assert bn.train and bn.args[5] is True and bn.roles[3:5] == ("const", "const")


def test_every_source_converted_or_its_failure_is_recorded():
    data = load_sites()
    assert data["sources"] == list(SOURCES)
    converted = {f"{s}/{m}" for s in SOURCES for m in ("eval", "train")} - set(aten_failures())
    used = {f"{src}/{mode}" for e in aten_catalogue() for src, mode, _, _ in e.uses}
    assert used == converted


@pytest.mark.parametrize(
    "name, kind, symptom",
    [
        ("aten.dropout.default", "pure", "RNG state differs"),
        ("aten.scaled_dot_product_attention.default", "pure", "RNG state differs"),
        ("aten.batch_norm.default", "pure", "worst: const"),
    ],
)
def test_an_aten_op_misdeclared_fails_its_check_in_the_faithful_schedule(
    name, kind, symptom, monkeypatch
):
    """Falsifying: a stochastic op declared pure draws new masks at every re-evaluation of the
    faithful schedule (and a stateful one advances its running statistics); the check must
    catch it. ``aten_rule`` is patched where ``rule_for`` looks it up."""
    e = _entry(name)
    declared = registry.aten_rule

    def misdeclared(op):
        return OpRule(kind) if op is e.op else declared(op)

    monkeypatch.setattr(registry, "aten_rule", misdeclared)
    with pytest.raises(AssertionError, match=f"faithful.*{symptom}"):
        check_aten(e, modes=("faithful",))


@pytest.mark.slow
def test_the_cache_is_what_the_source_models_give():
    """Collect afresh (builds and converts every source model in both modes): the same
    overloads, uses, failures and chosen call sites as the committed cache."""
    for library in ("transformers", "timm", "torchvision"):
        pytest.importorskip(library)
    fresh, cached = collect(), load_sites()
    assert fresh["failures"] == cached["failures"]
    assert list(fresh["ops"]) == list(cached["ops"]), "regenerate: gen_ops_table.py --collect-aten"
    for name, rec in fresh["ops"].items():
        old = cached["ops"][name]
        assert rec["uses"] == old["uses"] and rec["inplace"] == old["inplace"], name
        site, old_site = rec["site"], old["site"]
        assert (site is None) == (old_site is None), name
        if site is not None:
            assert (site["source"], site["train"], site["node"]) == (
                old_site["source"],
                old_site["train"],
                old_site["node"],
            ), name
