"""Op coverage: every rule in :mod:`pccompile.ops` has a single-op model that is checked, or a
recorded reason why not.

The catalogue (cases, skip reasons, the argument-pattern probe) and the check itself live in
:mod:`pccompile.ops_catalogue`, which ``tools/gen_ops_table.py`` also uses to write docs/ops.md;
this file parametrises over it and tests the catalogue's own invariants.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pccompile
from pccompile import UnsupportedOpError, ops
from pccompile.ops_catalogue import (
    FUNCTION_CASES,
    MODULE_CASES,
    MODULE_SKIPS,
    Entry,
    catalogue,
    check_case,
)


def _tested() -> list[Entry]:
    return [e for e in catalogue() if e.case is not None]


@pytest.mark.parametrize("entry", _tested(), ids=lambda e: e.name)
def test_single_op_forward_and_zil_equal_bp(entry):
    check_case(entry)


@pytest.mark.parametrize("name", ["torch.nn.functional.dropout", "nn.Dropout"])
def test_an_op_misdeclared_as_pure_fails_its_check(name, monkeypatch):
    """Falsifying: dropout re-registered as pure draws a new mask at every re-evaluation, and
    the faithful schedule's check must catch it."""
    (entry,) = [e for e in _tested() if e.name == name]
    table = ops.registry._MODULES if entry.table == "module" else ops.registry._FUNCTIONS
    monkeypatch.setitem(table, entry.key, ops.OpRule("pure"))
    with pytest.raises(AssertionError, match="differs from bp"):
        check_case(entry)


def test_every_registered_op_has_a_case_or_a_reason():
    entries = catalogue()
    r = ops.registered_ops()
    assert sum(1 for e in entries if e.table == "module") == len(r["modules"])
    assert sum(1 for e in entries if e.table == "method") == len(r["methods"])
    for e in entries:
        assert (e.case is None) != (not e.reason), e.name
    # Every torch.nn layer is a deliberate entry: a constructor, or a reason why not.
    for cls in ops.registry._MODULES:
        assert cls in MODULE_CASES or cls in MODULE_SKIPS, f"add nn.{cls.__name__} to MODULE_CASES"
    # A floor, not an exact count: the registry follows the installed torch's API.
    tested = {
        t: sum(1 for e in entries if e.table == t and e.case)
        for t in ("function", "method", "module")
    }
    assert tested["module"] >= 130 and tested["function"] >= 480 and tested["method"] >= 230


def test_hand_written_cases_name_registered_ops():
    names = {e.name for e in catalogue()}
    stale = sorted(set(FUNCTION_CASES) - names)
    assert not stale, f"FUNCTION_CASES entries that are not registry keys: {stale}"


# ------------------------------------------------------------------------------ unknown ops
def _scaled_softplus(x):
    return F.softplus(x) * 2


torch.fx.wrap("_scaled_softplus")


class _Uses(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.lin, self.how, self.act = nn.Linear(4, 3), how, nn.Tanh()

    def forward(self, x):
        h = self.lin(x)
        if self.how == "function":
            return _scaled_softplus(h)
        if self.how == "method":
            return h.tanh()
        return self.act(h)


@pytest.mark.parametrize(
    "how, node, needle",
    [
        ("function", "_scaled_softplus", "(test_ops_coverage."),
        ("method", "tanh", "(Tensor.tanh): no rule for this Tensor method"),
        ("module", "act", "(module 'act')"),
    ],
)
def test_unregistered_function_method_or_module_raises_naming_node_and_fix(
    monkeypatch, how, node, needle
):
    """There is no fallback: an op without a rule raises UnsupportedOpError at convert().
    Every public Tensor method and torch.nn layer has a rule, so the test takes one away."""
    if how == "method":
        monkeypatch.delitem(ops.registry._METHODS, "tanh")
    if how == "module":
        monkeypatch.delitem(ops.registry._MODULES, nn.Tanh)
    with pytest.raises(UnsupportedOpError) as err:
        pccompile.convert(_Uses(how), torch.randn(2, 4), capture="fx")
    msg = str(err.value)
    assert msg.startswith(f"Node '{node}' ") and needle in msg
    assert "capture='export'" in msg and "register_function" in msg and "register_module" in msg
    if how == "module":
        assert "no rule for leaf module class Tanh" in msg


def test_catalogue_uses_documented_names_and_rule_kinds():
    """Sanity of the naming the table uses: a few keys by their documented names."""
    names = {e.name: e for e in catalogue()}
    for n in (
        "operator.add",
        "operator.getitem",
        "torch.conv2d",
        "Tensor.view",
        "nn.Conv2d",
        "builtins.getattr",
    ):
        assert n in names, n
    assert names["operator.add"].key is operator.add
    assert names["nn.Dropout"].kind == "stochastic" and names["nn.BatchNorm2d"].kind == "stateful"
