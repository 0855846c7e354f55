"""Sweep timm's model families through the differential checker (issue 10: zero silent divergence).

For each model (the smallest variant of a timm family, random init, ``num_classes=10``, a small
input) and each combination of training mode (``train``/``eval``), rule and schedule (``zil`` or
``fpa``; ``efficient`` or ``faithful``) and loop habits (``acc1``/``acc2``: 3 optimizer steps of 1
or 2 accumulated micro-batches, clipping, momentum, weight decay, ``set_to_none=False``), this
trains a BP copy and a PC copy side by side with :func:`pccompile.testing.train_against_bp` in
float32 (``--dtype``), batch 2, cross-entropy, and records the worst relative difference of
``.grad``, parameters and buffers (0 = bitwise), every non-numeric problem (RNG, shared ``.grad``,
buffers changed by ``convert``), or the exception raised (type, first line, innermost frame).

A case *diverges silently* when it raises nothing but its report is not OK at ``--tol``
(default 1e-5): that is the failure issue 10 is about. A case that raises is loud, not silent.

Usage (one torch thread; the sweep is CPU-only)::

    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_timm.py --out docs/timm_sweep
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_timm.py --models resnet10t,vit \\
        --modes train --rules zil/efficient,zil/faithful --schedules acc1,acc2 --dtype float64
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_timm.py --resume --budget 500   # in chunks
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_timm.py --remedy --resume   # + leaf_modules=
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_timm.py --capture auto --models mobilevit

``--capture`` picks the front end (default ``fx``: the tables of ``tests/test_timm.py`` and
docs/reliability.md are symbolic tracing's). ``auto`` is what ``pccompile.convert`` does by
default: fx, and torch.export where fx cannot capture the model; the families fx cannot trace
then convert through export (``tools/sweep_export.py`` and ``tests/test_export_zoo.py`` run
them, docs/export.md has their table).

Writes ``<out>.json`` (every case, with tracebacks) and ``<out>.md`` (the table). ``--resume``
keeps the cases already in ``<out>.json`` and runs only the missing ones; ``--budget`` stops
starting new cases after that many seconds, so a long sweep can run as several short commands;
``--render`` rewrites ``<out>.md`` from ``<out>.json``. ``MODELS`` and ``REMEDIES`` are imported by
``tests/test_timm.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from pccompile.testing import Habits, train_against_bp  # noqa: E402

TOL = 1e-5  # above this (or with any non-numeric problem) and no exception: silent divergence
BATCH = 2
CLASSES = 10
CODE = ""  # code_hash() of the pccompile sources this process imported


@dataclass(frozen=True)
class TimmModel:
    """One row of the sweep: a timm family, its smallest variant and the input it gets.

    ``side`` is the square input size; ``kwargs`` go to ``timm.create_model`` (``img_size=``
    where the architecture takes it, so a transformer runs on a few tokens). ``heavy`` models
    (many parameters or a large fixed input) are left out of ``--quick`` runs. ``leaves``
    (``"module:Class"``) and ``concrete_args`` are the remedy ``convert``'s error names for a
    model torch.fx cannot trace: with ``--remedy`` the sweep converts with
    ``leaf_modules=`` those classes (opaque vertices) and ``concrete_args=`` those values.
    """

    family: str
    name: str
    side: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    heavy: bool = False
    leaves: tuple[str, ...] = ()
    concrete_args: dict[str, Any] | None = None

    @property
    def has_remedy(self) -> bool:
        return bool(self.leaves or self.concrete_args)


# The remedy convert's TraceError names, per model torch.fx cannot trace as it is: submodule
# classes to keep as opaque vertices (leaf_modules=) and arguments to fix (concrete_args=).
REMEDIES: dict[str, tuple[tuple[str, ...], dict[str, Any] | None]] = {
    "tf_efficientnetv2_b0": (("timm.layers:Conv2dSame",), None),
    "mobilevit_xxs": (("timm.models.mobilevit:MobileVitBlock",), None),
    "efficientvit_b0": (("timm.models.efficientvit_mit:LiteMLA",), None),
    "efficientvit_m0": (("timm.models.efficientvit_msra:LocalWindowAttention",), None),
    "twins_svt_small": (("timm.models.twins:LocallyGroupedAttn",), None),
    "vit_tiny_r_s16_p8_224": (
        ("timm.layers:StdConv2dSame", "timm.layers.pool2d_same:MaxPool2dSame"),
        None,
    ),
    "convit_tiny": (("timm.models.convit:GPSA",), None),
    "nest_tiny": (("timm.models.nest:NestLevel",), None),
    "mvitv2_tiny": (("timm.models.mvitv2:MultiScaleAttention",), None),
    "hiera_tiny_224": (("timm.models.hiera:PatchEmbed",), {"mask": None}),
}


def _m(family, name, side=32, heavy=False, **kwargs) -> TimmModel:
    leaves, concrete = REMEDIES.get(name, ((), None))
    return TimmModel(family, name, side, kwargs, heavy, leaves, concrete)


def leaf_classes(entry: TimmModel) -> list[type]:
    """The classes named in ``entry.leaves``, imported."""
    import importlib

    out = []
    for spec in entry.leaves:
        mod, cls = spec.split(":")
        out.append(getattr(importlib.import_module(mod), cls))
    return out


# The sweep list: one model per family, smallest variant that builds in well under a second on
# CPU and accepts a small input. Parameters (num_classes=10) in the comments.
MODELS: list[TimmModel] = [
    # --- convolutional, BatchNorm2d / BatchNormAct2d ---
    _m("resnet", "resnet10t"),  # 4.9M, deep stem
    _m("resnetv2", "resnetv2_18"),  # 11M, pre-activation
    _m("senet", "legacy_seresnet18"),  # 11M, squeeze-excite
    _m("resnest", "resnest14d"),  # 8.6M, split attention (rSoftMax)
    _m("res2net", "res2net50_14w_8s", heavy=True),  # 23M, torch.split + chunked convs
    _m("sknet", "skresnet18"),  # 11M, selective kernel
    _m("dpn", "dpn48b"),  # 8.3M, dual path (slicing + cat)
    _m("densenet", "densenet121"),  # 7.0M
    _m("dla", "dla46_c", 64),  # 1.1M, tree aggregation
    _m("hrnet", "hrnet_w18_small", 64, heavy=True),  # 11M, multi-resolution fuse
    _m("cspnet", "cs3darknet_focus_s", 64),  # 2.8M, focus stem (space-to-depth)
    _m("vovnet", "ese_vovnet19b_dw"),  # 5.5M, effective SE
    _m("selecsls", "selecsls42b", heavy=True),  # 31M
    _m("tresnet", "tresnet_m", 64, heavy=True),  # 29M, space-to-depth, anti-alias, inplace ABN
    _m("xception", "xception41", 64, heavy=True),  # 25M, separable convs
    _m("inception_v3", "inception_v3", 75, heavy=True),  # 22M, smallest input it takes
    _m("efficientnet", "efficientnet_b0"),  # 4.0M, BatchNormAct2d, SE, drop_path
    _m("efficientnetv2", "tf_efficientnetv2_b0"),  # 5.9M, TF "same" padding (Conv2dSame)
    _m("mobilenetv3", "mobilenetv3_small_050"),  # 0.6M, hard-swish, SE
    _m("mobilenetv4", "mobilenetv4_conv_small_035"),  # 0.6M, universal inverted bottleneck
    _m("lcnet", "lcnet_035"),  # 0.4M
    _m("mnasnet", "mnasnet_small"),  # 0.8M
    _m("fbnet", "fbnetc_100"),  # 3.6M
    _m("mixnet", "mixnet_s"),  # 2.6M, mixed depthwise kernels (split + cat)
    _m("hardcorenas", "hardcorenas_a"),  # 4.0M
    _m("ghostnet", "ghostnet_050"),  # 1.3M, ghost modules (slice of cat)
    _m("rexnet", "rexnet_100"),  # 3.5M, partial-channel residual
    _m("regnet", "regnetx_002"),  # 2.3M
    _m("regnetz", "regnetz_005"),  # 6.1M, byobnet
    _m("repvgg", "repvgg_a0"),  # 7.8M, byobnet, re-parameterisable branches
    _m("gernet", "gernet_s"),  # 6.3M, byobnet
    _m("mobileone", "mobileone_s0"),  # 4.3M, byobnet
    _m("hgnet", "hgnetv2_b0", 64),  # 4.0M, learnable affine (LAB)
    _m("nfnet", "nf_regnet_b0"),  # 7.8M, ScaledStdConv2d (weight standardised in forward)
    _m("repvit", "repvit_m0_9"),  # 4.7M
    _m("fasternet", "fasternet_t0"),  # 2.6M, partial conv (slice + cat)
    _m("starnet", "starnet_s050"),  # 0.4M, element-wise star product
    _m("inception_next", "inception_next_atto"),  # 3.2M
    _m("convnext", "convnext_atto"),  # 3.4M, LayerNorm2d, layer scale
    _m("mambaout", "mambaout_femto"),  # 6.2M, gated CNN
    _m("poolformer", "poolformer_s12"),  # 11M, metaformer, GroupNorm1
    # --- convolution + attention hybrids ---
    _m("edgenext", "edgenext_xx_small", 64),  # 1.2M, split depthwise transposed attention
    _m("mobilevit", "mobilevit_xxs", 64),  # 1.0M, unfold/fold into patches
    _m("efficientvit_mit", "efficientvit_b0", 64),  # 2.1M, ReLU linear attention
    _m("efficientvit_msra", "efficientvit_m0", 64, img_size=64),  # 2.2M, cascaded group attn
    _m("levit", "levit_128s", 64, img_size=64),  # 7.0M, attention biases indexed by offsets
    _m("efficientformerv2", "efficientformerv2_s0", 64, img_size=64),  # 3.3M
    _m("fastvit", "fastvit_t8", 64),  # 3.3M, RepMixer
    _m("coatnet", "coatnet_nano_rw_224", 64, img_size=64),  # 15M, maxxvit, rel-pos bias
    _m("maxvit", "maxvit_pico_rw_256", 64, img_size=64),  # 7.2M, block + grid partitions
    _m("botnet", "botnet26t_256", 64, img_size=64),  # 10M, relative position self-attention
    _m("visformer", "visformer_tiny", 64, img_size=64),  # 9.8M
    _m("gcvit", "gcvit_xxtiny", 64, img_size=64),  # 11M, global context attention
    _m("coat", "coat_lite_tiny", 64, img_size=64),  # 5.4M, conv-attentional, factorised attn
    _m("pvt_v2", "pvt_v2_b0", 64),  # 3.4M, spatial-reduction attention
    _m("twins", "twins_svt_small", 64, heavy=True),  # 24M, locally-grouped attention
    _m("vit_hybrid", "vit_tiny_r_s16_p8_224", 64, img_size=64),  # 6.1M, ResNetV2 stem + ViT
    _m("convit", "convit_tiny", img_size=32),  # 5.5M, gated positional self-attention
    # --- transformers and MLPs on tokens ---
    _m("vit", "vit_tiny_patch16_224", img_size=32),  # 5.5M, 4 patches + class token
    _m("deit", "deit_tiny_distilled_patch16_224", img_size=32),  # 5.5M, distillation token
    _m("cait", "cait_xxs24_224", img_size=32),  # 12M, class attention, layer scale
    _m("xcit", "xcit_nano_12_p16_224", img_size=32),  # 2.9M, cross-covariance attention
    _m("eva", "eva02_tiny_patch14_224", 56, img_size=56),  # 5.5M, rotary embeddings, SwiGLU
    _m("pit", "pit_ti_224", 64, img_size=64),  # 4.6M, pooling-based ViT
    _m("swin", "swin_tiny_patch4_window7_224", 64, heavy=True, img_size=64, window_size=2),
    _m("nest", "nest_tiny", 64, heavy=True, img_size=64),  # 16M, nested blocks
    _m("mvitv2", "mvitv2_tiny", 64, heavy=True, img_size=64),  # 23M, pooling attention
    _m("hiera", "hiera_tiny_224", 64, heavy=True, img_size=64),  # 27M, unroll/reroll masks
    _m("volo", "volo_d1_224", 64, heavy=True, img_size=64),  # 26M, outlook attention
    _m("mixer", "mixer_s32_224", 64, img_size=64),  # 18M, 4 tokens
    _m("resmlp", "resmlp_12_224", img_size=32),  # 15M, affine norm
    _m("gmlp", "gmlp_ti16_224", img_size=32),  # 4.6M, spatial gating unit
    _m("sequencer", "sequencer2d_s", heavy=True, img_size=32),  # 27M, bidirectional LSTMs
    _m("convmixer", "convmixer_768_32", heavy=True),  # 20M, depth 32
]
assert set(REMEDIES) <= {m.name for m in MODELS}

RULES = ["zil/efficient", "zil/faithful", "fpa/efficient", "fpa/faithful"]
DEFAULT_RULES = ["zil/efficient", "fpa/efficient"]
SCHEDULES = {
    "acc1": Habits(steps=3, accumulate=1),
    "acc2": Habits(steps=3, accumulate=2),
    "acc2-none": Habits(steps=3, accumulate=2, set_to_none=True),
}
MODES = {"train": True, "eval": False}


def families() -> set[str]:
    return {m.family for m in MODELS}


def by_name(name: str) -> TimmModel:
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(name)


def xent(out, y):
    """Cross-entropy; a tuple output (auxiliary heads) sums the loss over its tensors."""
    if isinstance(out, (tuple, list)):
        return sum(F.cross_entropy(o, y) for o in out if o is not None)
    return F.cross_entropy(out, y)


def build(entry: TimmModel, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(entry.name, pretrained=False, num_classes=CLASSES, **entry.kwargs)


def batches(entry: TimmModel, n: int = 2, seed: int = 0, dtype=torch.float32):
    """``n`` micro-batches ``((x,), y)`` of ``BATCH`` images at the entry's input size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(BATCH, 3, entry.side, entry.side, generator=g, dtype=dtype)
        y = torch.randint(0, CLASSES, (BATCH,), generator=g)
        out.append(((x,), y))
    return out


def check(
    entry: TimmModel,
    mode: str,
    rule: str,
    schedule: str,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    remedy: bool = False,
    capture: str = "fx",
):
    """Run one case through the checker; returns the :class:`DiffReport` (or raises).

    ``remedy``: convert with the entry's ``leaves`` and ``concrete_args`` (its TraceError remedy).
    ``capture``: the front end (``"fx"``: the tables below are symbolic tracing's; ``"auto"``
    falls back to torch.export where fx cannot trace).
    """
    rule_name, rule_mode = rule.split("/")
    habits = SCHEDULES[schedule]
    dtype = dtype or torch.float32
    model = build(entry, seed).to(dtype)
    data = batches(entry, max(2, habits.accumulate), seed, dtype)
    opts: dict = {"capture": capture}
    if remedy and entry.leaves:
        opts["leaf_modules"] = leaf_classes(entry)
    if remedy and entry.concrete_args:
        opts["concrete_args"] = dict(entry.concrete_args)
    return train_against_bp(
        model,
        data,
        xent,
        rule_name,
        habits=habits,
        train=MODES[mode],
        seed=seed,
        convert_options=opts,
        mode=rule_mode,
    )


class CaseTimeout(BaseException):  # noqa: N818  (BaseException: `except Exception` must not eat it)
    """Raised by SIGALRM when a case runs past ``--timeout-per-case``."""


@contextlib.contextmanager
def alarm(seconds: float | None):
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        raise CaseTimeout(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _innermost(tb_exc: BaseException) -> str:
    """The innermost frame inside pccompile (else the innermost frame), as ``file:line fn``."""
    frames = traceback.extract_tb(tb_exc.__traceback__)
    ours = [f for f in frames if "/pccompile/" in f.filename and "testing.py" not in f.filename]
    f = (ours or frames or [None])[-1]
    if f is None:
        return ""
    path = Path(f.filename)
    short = "/".join(path.parts[-2:])
    return f"{short}:{f.lineno} {f.name}"


def _remedy_text(entry: TimmModel) -> str:
    parts = [c.split(":")[1] for c in entry.leaves]
    parts += [f"{k}={v!r}" for k, v in (entry.concrete_args or {}).items()]
    return ",".join(parts)


def kinds(rep) -> list[str]:
    """What differs from BP, by kind, at any tolerance (for the diagnosis column)."""
    out = []
    if any(r.grad_diff > 0 for r in rep.rows):
        out.append("grad")
    if any(r.param_diff > 0 for r in rep.rows):
        out.append("param")
    if any(r.buffer_diff > 0 for r in rep.rows):
        out.append("buffer")
    if rep.convert_changed:
        out.append("convert_changed")
    if any(not r.rng_equal for r in rep.rows):
        out.append("rng")
    if any(r.shared for r in rep.rows):
        out.append("shared_grad")
    if any(r.grad_presence for r in rep.rows):
        out.append("grad_presence")
    return out


def phase(exc: BaseException) -> str:
    """Where in the checker's loop ``exc`` came from: ``convert``, ``bp`` (the BP copy's own
    forward/backward: the model cannot be trained this way at all), ``learn`` or ``?``."""
    for f in reversed(traceback.extract_tb(exc.__traceback__)):
        if f.filename.endswith(os.path.join("pccompile", "testing.py")):
            line = f.line or ""
            if "convert(" in line:
                return "convert"
            if "bp_model" in line or "loss.backward" in line:
                return "bp"
            if "pcm.learn" in line:
                return "learn"
    return "?"


def run_case(
    entry: TimmModel,
    mode: str,
    rule: str,
    schedule: str,
    tol: float = TOL,
    timeout: float | None = None,
    dtype: torch.dtype | None = None,
    remedy: bool = False,
    capture: str = "fx",
):
    row: dict[str, Any] = {
        "family": entry.family,
        "model": entry.name,
        "side": entry.side,
        "mode": mode,
        "rule": rule,
        "schedule": schedule,
        "steps": SCHEDULES[schedule].steps,
        "accumulate": SCHEDULES[schedule].accumulate,
        "dtype": str(dtype or torch.float32).removeprefix("torch."),
        "remedy": _remedy_text(entry) if remedy else "",
        "capture": capture,
    }
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with alarm(timeout):
                rep = check(
                    entry, mode, rule, schedule, dtype=dtype, remedy=remedy, capture=capture
                )
        except CaseTimeout as e:
            row.update(status="timeout", error=f"CaseTimeout: {e}")
        except Exception as e:  # a loud failure: recorded, the sweep goes on
            first = (str(e).strip().splitlines() or [""])[0]
            where = phase(e)
            user_at = next(
                (ln.strip()[3:] for ln in str(e).splitlines() if ln.strip().startswith("at ")), ""
            )
            user_at = re.sub(r"^.*site-packages/", "", user_at)
            row.update(
                status="bp_raises" if where == "bp" else "raises",
                phase=where,
                error_type=type(e).__name__,
                error=f"{type(e).__name__}: {first}"[:300],
                raised_at=_innermost(e),
                user_at=user_at[:160],
                traceback="".join(traceback.format_exception(e)[-12:])[-4000:],
            )
        else:
            grad = max((r.grad_diff for r in rep.rows), default=0.0)
            param = max((r.param_diff for r in rep.rows), default=0.0)
            buf = max((r.buffer_diff for r in rep.rows), default=0.0)
            other = [p for p in rep.problems(math.inf)]
            worst_row = max(rep.rows, key=lambda r: r.worst, default=None)
            first = next((r for r in rep.rows if r.worst > tol), None)
            if rep.bitwise:
                status = "bitwise"
            elif rep.ok(tol):
                status = "close"
            else:
                status = "DIVERGES"
            row.update(
                status=status,
                worst=rep.worst,
                grad_diff=grad,
                param_diff=param,
                buffer_diff=buf,
                buffers_ok=buf <= tol,
                where=worst_row.where if worst_row is not None and worst_row.worst > 0 else "",
                worst_at=(
                    f"step {worst_row.step} ({worst_row.phase})"
                    if worst_row is not None and worst_row.worst > 0
                    else ""
                ),
                first_bad=f"step {first.step} ({first.phase})" if first is not None else "",
                kinds=kinds(rep),
                run_mode=rep.mode,
                other_problems=other[:5],
                convert_changed=rep.convert_changed[:5],
                n_convert_changed=len(rep.convert_changed),
            )
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["code"] = CODE
    msgs = []
    for w in caught:
        m = f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
        if m not in msgs:
            msgs.append(m)
    row["warnings"] = msgs[:5]
    return row


def _fmt_diff(row) -> str:
    if "worst" not in row:
        return "-"
    w = row["worst"]
    return "0" if w == 0 else ("inf" if math.isinf(w) else f"{w:.1e}")


def _detail(row) -> str:
    if row["status"] in ("raises", "bp_raises", "timeout"):
        s = row["error"]
        if len(s) > 130:
            s = s[:127] + "..."
        if row.get("phase") and row["phase"] != "?":
            s = f"[{row['phase']}] {s}"
        if row.get("user_at"):
            s += f" at `{row['user_at']}`"
        elif row.get("raised_at"):
            s += f" (at {row['raised_at']})"
    elif row["status"] == "bitwise":
        s = ""
    else:
        parts = [",".join(row.get("kinds", []))]
        if row.get("where"):
            parts.append(f"worst {row['where']} at {row['worst_at']}")
        if row.get("first_bad"):
            parts.append(f"first > tol at {row['first_bad']}")
        if row.get("n_convert_changed"):
            parts.append(
                f"convert changed {row['n_convert_changed']} (e.g. {row['convert_changed'][0]})"
            )
        parts += [
            p
            for p in row.get("other_problems", [])
            if not p.startswith("convert changed") and "(worst: " not in p
        ][:1]
        s = "; ".join(x for x in parts if x)
    if row.get("warnings"):
        s = "; ".join(x for x in (s, f"warns {row['warnings'][0][:90]}") if x)
    return s.replace("|", "\\|").replace("\n", " ")[:320]


def markdown(rows: list[dict], meta: dict, tol: float) -> str:
    out = [
        "# timm sweep: Z-IL/FPA against BP through the differential checker",
        "",
        f"Generated by `tools/sweep_timm.py` on {meta.get('date', '?')}: torch "
        f"{meta.get('torch')}, timm {meta.get('timm')}, pccompile at `{meta.get('git')}` "
        f"(sources {', '.join(meta.get('codes', []))}); "
        f"{meta.get('dtype', 'float32')}, batch {BATCH}, cross-entropy, SGD (lr 0.05, "
        "momentum 0.9, weight decay 1e-4), clip 1.0, `zero_grad(set_to_none=False)`. "
        "`acc1`/`acc2`: 3 optimizer steps of 1/2 accumulated micro-batches. `worst`: the "
        "largest relative difference `max|pc - bp| / max|bp|` of any `.grad`, parameter or "
        "buffer after any micro-batch or step (0 = bitwise; inf = an integer buffer differs). "
        f"`DIVERGES`: no exception, but not OK at {tol:g} (a silent divergence); `close`: OK "
        "at that tolerance but not bitwise; `bp_raises`: the BP copy itself cannot train the "
        "model this way (not a pccompile failure). `[convert]`/`[learn]`: where an exception "
        "came from.",
        "",
    ]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    fams = len({r["family"] for r in rows})
    models = len({r["model"] for r in rows})
    out.append(
        f"{len(rows)} cases, {models} models, {fams} families: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + "."
    )
    out += [
        "",
        "| family | model | mode | rule | schedule | steps | worst | buffers ok | status | s "
        "| detail |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bufs = "-" if "buffers_ok" not in r else ("yes" if r["buffers_ok"] else "**no**")
        status = r["status"] if r["status"] in ("bitwise", "close") else f"**{r['status']}**"
        steps = f"{r['steps']}x{r['accumulate']}"
        model = r["model"] + (f" (remedy: {r['remedy']})" if r.get("remedy") else "")
        if r.get("capture", "fx") != "fx":
            model += f" (capture={r['capture']})"
        out.append(
            f"| {r['family']} | {model} | {r['mode']} | {r['rule']} | {r['schedule']} | "
            f"{steps} | {_fmt_diff(r)} | {bufs} | {status} | {r['seconds']:.1f} | {_detail(r)} |"
        )
    return "\n".join(out) + "\n"


def _git_head() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "pccompile"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def code_hash() -> str:
    """A short hash of pccompile's sources, stored per case: the package may change mid-sweep."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted((ROOT / "pccompile").rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def select(names: list[str], quick: bool) -> list[TimmModel]:
    if not names:
        return [m for m in MODELS if not (quick and m.heavy)]
    out = []
    for n in names:
        hit = [m for m in MODELS if n in (m.name, m.family)]
        if not hit:  # any timm name not in the table: default input 32
            hit = [TimmModel("?", n)]
        out += [m for m in hit if m not in out]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model names or families (default: all)")
    ap.add_argument("--quick", action="store_true", help="skip the heavy models")
    ap.add_argument("--modes", default="train,eval", help="train,eval (default both)")
    ap.add_argument(
        "--rules",
        default=",".join(DEFAULT_RULES),
        help=f"rule/schedule pairs from {RULES} (default %(default)s)",
    )
    ap.add_argument("--faithful", action="store_true", help="add zil/faithful (slower)")
    ap.add_argument(
        "--schedules", default="acc2", help=f"from {sorted(SCHEDULES)} (default %(default)s)"
    )
    ap.add_argument("--out", default="timm_sweep", help="writes OUT.json and OUT.md")
    ap.add_argument(
        "--remedy",
        action="store_true",
        help="only the models with a TraceError remedy, converted with it (leaf_modules=, "
        "concrete_args=)",
    )
    ap.add_argument(
        "--capture",
        default="fx",
        choices=["fx", "auto", "export"],
        help="front end (default fx; auto = pccompile.convert's default: fx, then torch.export)",
    )
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--tol", type=float, default=TOL, help="silent-divergence threshold")
    ap.add_argument("--timeout-per-case", type=float, default=300.0, help="seconds (0: none)")
    ap.add_argument("--budget", type=float, default=0.0, help="stop starting cases after N s")
    ap.add_argument("--resume", action="store_true", help="keep cases already in OUT.json")
    ap.add_argument("--list", action="store_true", help="print the model table and exit")
    ap.add_argument("--render", action="store_true", help="rewrite OUT.md from OUT.json and exit")
    args = ap.parse_args(argv)

    if args.list:
        for m in MODELS:
            heavy = "heavy" if m.heavy else ""
            print(f"{m.family:20s} {m.name:34s} {m.side:4d} {heavy:5s} {_remedy_text(m)}")
        print(f"{len(MODELS)} models, {len(families())} families")
        return 0

    torch.set_num_threads(1)
    import timm

    global CODE
    CODE = code_hash()
    modes = _split(args.modes)
    rules = _split(args.rules) + (["zil/faithful"] if args.faithful else [])
    rules = list(dict.fromkeys(rules))
    schedules = _split(args.schedules)
    for v, allowed in ((modes, MODES), (rules, RULES), (schedules, SCHEDULES)):
        bad = [x for x in v if x not in allowed]
        if bad:
            ap.error(f"unknown {bad}; choose from {list(allowed)}")
    models = select(_split(args.models), args.quick)
    if args.remedy:
        models = [m for m in models if m.has_remedy]
    if args.remedy and args.capture == "export":
        ap.error(
            "--remedy (leaf_modules=, concrete_args=) is for torch.fx; not with --capture export"
        )

    out = Path(args.out)
    jpath, mpath = out.with_suffix(".json"), out.with_suffix(".md")
    rows: list[dict] = []
    runs: list = []
    if (args.resume or args.render) and jpath.exists():
        previous = json.loads(jpath.read_text())
        rows = previous["results"]
        runs = previous["meta"].get("runs", [previous["meta"].get("argv")])
    dtype = getattr(torch, args.dtype)
    done = {
        (
            r["model"],
            r["mode"],
            r["rule"],
            r["schedule"],
            r["dtype"],
            bool(r.get("remedy")),
            r.get("capture", "fx"),
        )
        for r in rows
    }
    meta = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "git": _git_head(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "argv": sys.argv[1:] if argv is None else argv,
        "codes": sorted({r.get("code", "?") for r in rows} | {CODE}),
        "tol": args.tol,
        "dtype": args.dtype,
    }

    meta["runs"] = [*runs, meta["argv"]]

    def save():
        order = {m.name: i for i, m in enumerate(MODELS)}
        key = lambda r: (  # noqa: E731
            order.get(r["model"], len(order)),
            r["model"],
            bool(r.get("remedy")),
            r.get("capture", "fx"),
            r.get("dtype", "float32"),
            list(MODES).index(r["mode"]),
            RULES.index(r["rule"]),
            list(SCHEDULES).index(r["schedule"]),
        )
        rows.sort(key=key)
        meta["codes"] = sorted({r.get("code", "?") for r in rows})
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        mpath.write_text(markdown(rows, meta, args.tol))

    if args.render:
        if not rows:
            ap.error(f"--render: no cases in {jpath}")
        shown = {**previous["meta"], "codes": sorted({r.get("code", "?") for r in rows})}
        mpath.write_text(markdown(rows, shown, args.tol))
        print(f"wrote {mpath} from {len(rows)} cases in {jpath}")
        return 0

    t_start = time.perf_counter()
    ran = 0
    for entry in models:
        for mode in modes:
            for rule in rules:
                for schedule in schedules:
                    key = (entry.name, mode, rule, schedule, args.dtype, args.remedy, args.capture)
                    if key in done:
                        continue
                    if args.budget and time.perf_counter() - t_start > args.budget:
                        save()
                        print(f"budget spent after {ran} cases; rerun with --resume")
                        return 0
                    row = run_case(
                        entry,
                        mode,
                        rule,
                        schedule,
                        args.tol,
                        args.timeout_per_case or None,
                        dtype,
                        args.remedy,
                        args.capture,
                    )
                    rows.append(row)
                    ran += 1
                    print(
                        f"{entry.name:34s} {mode:5s} {rule:14s} {schedule:9s} "
                        f"{row['status']:9s} {_fmt_diff(row):>8s} {row['seconds']:7.1f}s "
                        f"{_detail(row)[:110]}",
                        flush=True,
                    )
                    save()
    save()
    total = time.perf_counter() - t_start
    print(f"{ran} cases in {total:.0f} s; wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
