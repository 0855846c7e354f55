"""The timm and torchvision families torch.fx cannot trace, converted by ``capture="auto"``.

``pccompile.convert`` tries torch.fx first and falls back to torch.export when fx cannot capture
the model. ``tests/test_timm.py`` keeps its ``KNOWN_FAILURES`` for ``capture="fx"`` (they are
about symbolic tracing); this file runs the same families, and the others issue 12 names
(MobileViT v2, TinyViT, CPUBone, NASNet/PNASNet, a Qwen3 ViT, TF-"same" EfficientNet,
torchvision's RAFT, Swin3D and MViT), through ``capture="auto"``, no leaf modules, with
``tools/sweep_export.py``'s ``CASES`` and ``check`` (the transformers models of that sweep are
tested in ``tests/test_export.py``).

Each case trains a BP copy and a PC copy through :func:`pccompile.testing.train_against_bp`:
float32, batch 2, 3 optimizer steps of 2 accumulated micro-batches (clipping, momentum, weight
decay, ``set_to_none=False``), train and eval mode, ``zil`` and ``fpa`` (efficient schedule),
and asserts **bitwise** equality (every ``.grad``, parameter and buffer after every micro-batch
and step, the RNG state, no shared ``.grad``, convert changed nothing). A case in
``KNOWN_FAILURES`` is a strict xfail expecting its exception: it fails the suite when it starts
passing (remove it) or fails differently. ``NOT_APPLICABLE``: plain BP cannot train the model
that way.

``make test`` runs ``FAST`` (each under 20 s on one thread); the rest is ``@pytest.mark.slow``
(``make test-all``; 12 minutes on one thread). ``tools/sweep_export.py`` writes the same
cases as the table in docs/export.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import pccompile
from pccompile.errors import TraceError

timm = pytest.importorskip("timm")

_PATH = Path(__file__).resolve().parents[1] / "tools" / "sweep_export.py"
_spec = importlib.util.spec_from_file_location("sweep_export", _PATH)
sweep = importlib.util.module_from_spec(_spec)
sys.modules["sweep_export"] = sweep  # dataclasses look their module up there
_spec.loader.exec_module(sweep)

# RAFT keeps its correlation pyramid on `self` during forward; torch.export warns that such
# tensor attributes "must be registered as buffers". convert restores them afterwards (the
# checker's `convert_changed` would say otherwise), so the warning is the model's, not a problem.
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")

SCHEDULE = "acc2"  # 3 steps x 2 micro-batches
MODES = ["train", "eval"]
RULES = ["zil/efficient", "fpa/efficient"]
ZOO = [c.name for c in sweep.CASES if c.source in ("timm", "torchvision")]
ANY = None

# `make test`: TF-"same" padding (the headline timm failure), MobileViT's unfold/fold
# with a size check, CPUBone's padding from sizes, and RAFT (two images, an int argument, a list
# of flows out). Each case is one checker run, 4-10 s on one thread.
FAST = [
    ("tf_efficientnet_b0", "train", "zil/efficient"),
    ("mobilevit_xxs", "eval", "zil/efficient"),
    ("cpubone_nano", "train", "fpa/efficient"),
    ("raft_small", "train", "zil/efficient"),
]

_COPY = (
    "torch.export records `{code}` as aten.slice views and an in-place aten.copy_ into them; "
    "pccompile's functionalisation has no out-of-place form for copy_ (torch's own, "
    "ExportedProgram.run_decompositions({{}}), gives slice_scatter) and raises "
    "UnsupportedOpError, so both front ends fail"
)

# Cases that fail today: key -> (exception the test raises, reason). Strict xfails.
KNOWN_FAILURES: dict[tuple, tuple[type[BaseException], str]] = {
    ("efficientvit_b0", ANY, ANY): (
        TraceError,
        "LiteMLA computes attention in `with torch.autocast(device_type, enabled=False):`; "
        "torch.export wraps the block in the higher-order op torch.ops.higher_order."
        "wrap_with_autocast, which has no rule (UnsupportedOpError), so both front ends fail",
    ),
    ("convit_tiny", ANY, ANY): (
        TraceError,
        _COPY.format(code="rel_indices[:, :, :, 2] = indd")
        + "; the first forward builds GPSA's rel_indices buffer (a (1, 1, 1, 3) placeholder "
        "until then): after one eager forward it converts and is bitwise (convit_tiny+warm)",
    ),
    ("mvitv2_tiny", ANY, ANY): (
        TraceError,
        _COPY.format(code="attn[:, :, sp_idx:, sp_idx:] = ...")
        + " (the relative-position term written into a slice of the attention logits)",
    ),
    ("mvit_v2_s", ANY, ANY): (
        TraceError,
        _COPY.format(code="attn[:, :, 1:, 1:] += rel_pos; x[:, :, 1:, :] += shortcut[...]"),
    ),
}

_BIAS_CACHE = (
    "plain BP cannot train it in eval mode: timm caches the gathered attention biases in eval "
    "mode (attention_bias_cache), so the second backward reuses a freed graph"
)
NOT_APPLICABLE: dict[tuple, str] = {
    ("efficientvit_m0", "eval", ANY): _BIAS_CACHE,
    ("tiny_vit_5m_224", "eval", ANY): _BIAS_CACHE,
}


def _lookup(table: dict, model: str, mode: str, rule: str):
    for key in ((model, mode, rule), (model, mode, ANY), (model, ANY, rule), (model, ANY, ANY)):
        if key in table:
            return table[key]
    return None


def _param(name, mode, rule, mark=None):
    marks = [mark] if mark else []
    skip = _lookup(NOT_APPLICABLE, name, mode, rule)
    fail = _lookup(KNOWN_FAILURES, name, mode, rule)
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    elif fail:
        exc, reason = fail
        marks.append(pytest.mark.xfail(strict=True, raises=exc, reason=reason))
    return pytest.param(name, mode, rule, marks=marks, id=f"{name}-{mode}-{rule}")


def _check(name: str, mode: str, rule: str, schedule: str = SCHEDULE):
    rep = sweep.check(sweep.by_name(name), mode, rule, schedule)
    habits = sweep.SCHEDULES[schedule]
    assert rep.mode == rule.split("/")[1]
    assert len(rep.rows) == habits.steps * (habits.accumulate + 1)
    assert rep.bitwise, f"{name} {mode} {rule} is not bitwise:\n" + "\n".join(
        rep.problems(0.0)[:10]
    )
    return rep


# ---- make test -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, mode, rule", [_param(*case) for case in FAST])
def test_fast_fx_untraceable_families_train_like_bp(name, mode, rule):
    _check(name, mode, rule)


def test_auto_falls_back_to_export_where_fx_fails_and_builds_a_pc_network_of_aten_ops():
    case = sweep.by_name("cpubone_nano")
    x = sweep.example(case, torch.float32)
    with pytest.raises(TraceError, match="if pad_h or pad_w"):
        pccompile.convert(case.build(torch.float32).eval(), x, capture="fx")
    pcm = pccompile.convert(case.build(torch.float32).eval(), x)
    stats = sweep.graph_stats(pcm)
    # every conv, norm, activation and add is its own vertex: a PC network of the model
    assert stats == {
        "front_end": "export",
        "op_vertices": 113,
        "identity_vertices": 72,
        "depth": 113,
    }
    convs = [v for v in pcm.plan.vertices if "conv2d" in str(v.node.target)]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in pcm.original.modules())
    assert convs[0].name.startswith("stem.")  # named after the module that called it


def test_tables_name_cases_of_the_sweep():
    names = {c.name for c in sweep.CASES}
    for table in (KNOWN_FAILURES, NOT_APPLICABLE):
        for model, mode, rule in table:
            assert model in ZOO, model
            assert mode in (ANY, *MODES), mode
            assert rule in (ANY, *RULES), rule
    assert {name for name, _, _ in FAST} <= set(ZOO) - {k[0] for k in KNOWN_FAILURES}
    # every family torch.fx cannot trace in tools/sweep_timm.py gets an auto run here
    assert set(sweep.sweep_timm.REMEDIES) <= names
    timm_names = [c.name for c in sweep.CASES if c.source == "timm" and "+" not in c.name]
    assert not [n for n in timm_names if not timm.is_model(n)]


# ---- make test-all ---------------------------------------------------------------------------

SLOW = [
    _param(name, mode, rule, pytest.mark.slow)
    for name in ZOO
    for mode in MODES
    for rule in RULES
    if (name, mode, rule) not in FAST
]


@pytest.mark.parametrize("name, mode, rule", SLOW)
def test_fx_untraceable_families_train_like_bp(name, mode, rule):
    _check(name, mode, rule)


# Faithful Z-IL (every value node updated at every inference step) costs 10-20 times the
# efficient schedule at depth ~115 (cpubone_nano, raft_small); the two shallowest run it.
FAITHFUL = ["cpubone_nano", "raft_small"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAITHFUL)
def test_faithful_zil_is_bitwise_on_the_shallow_ones(name):
    _check(name, "train", "zil/faithful", schedule="acc1")
