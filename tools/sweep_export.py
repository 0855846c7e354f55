"""What the torch.export front end was tried on (issue 12): one command, one table.

Every model here is one ``torch.fx`` cannot capture as it is: the fx-untraceable timm families
of ``tools/sweep_timm.py`` and issue 12 (MobileViT v1/v2, hybrid ViT, EfficientViT MIT and MSRA,
ConViT, TinyViT, NesT, NASNet/PNASNet, CPUBone, a Qwen3 ViT, TF-"same" EfficientNets, Twins,
MViTv2, Hiera), torchvision's ``raft_small``, ``swin3d_t`` and ``mvit_v2_s``, and Hugging Face
transformers models built from small random configs (BERT, DistilBERT, RoBERTa, GPT-2, Llama,
Mistral, T5, BART, ViT; ``use_cache=False``, no download). Smallest variants, random init,
small inputs where the model allows.

For each model this converts it with ``capture="auto"`` (what ``pccompile.convert`` does by
default: torch.fx, then torch.export) in eval and train mode and records the front end used,
the PC graph's size (op vertices, identity vertices, depth), the convert time and, when the
front end was export, why fx failed. Then it trains a BP copy and a PC copy side by side with
:func:`pccompile.testing.train_against_bp` (float32 by default, batch 2, 3 optimizer steps of 2
accumulated micro-batches with clipping, momentum, weight decay, ``set_to_none=False``) for
``zil`` and ``fpa`` (efficient schedule; ``--faithful`` adds faithful Z-IL), and records the
worst relative difference of any ``.grad``, parameter or buffer (0 = bitwise), every non-numeric
problem, or the exception (type, first line, where).

Usage (one torch thread; CPU only)::

    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_export.py --out export_sweep
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_export.py --resume --budget 600  # in chunks
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_export.py --models bert,gpt2 --dtype float64
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_export.py --bert-time    # convert time only
    OMP_NUM_THREADS=1 .venv/bin/python tools/sweep_export.py --render --doc docs/export.md

Writes ``<out>.json`` (every case, with tracebacks) and ``<out>.md`` (the tables); ``--doc``
also replaces the part of that file between ``<!-- sweep:begin -->`` and ``<!-- sweep:end -->``
with the tables. ``--resume`` keeps the cases already in ``<out>.json``; ``--budget`` stops
starting cases after that many seconds; ``--render`` rewrites the tables from ``<out>.json``.
``CASES`` and :func:`check` are imported by ``tests/test_export_zoo.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, p)

import sweep_timm  # noqa: E402  (tools/sweep_timm.py: timm entries, timeouts, error rows)

import pccompile  # noqa: E402
from pccompile.testing import train_against_bp  # noqa: E402

TOL32 = 1e-5  # float32: above this (or any non-numeric problem) without an exception: diverges
TOL64 = 1e-9  # float64: what issue 12 asks where float32 is not bitwise
BATCH = sweep_timm.BATCH
SCHEDULES = sweep_timm.SCHEDULES
MODES = sweep_timm.MODES
RULES = ["zil/efficient", "zil/faithful", "fpa/efficient", "fpa/faithful"]
DEFAULT_RULES = ["zil/efficient", "fpa/efficient"]


@dataclass(frozen=True)
class Case:
    """One model of the sweep.

    ``source``: ``timm``, ``torchvision`` or ``transformers``. ``build(dtype)`` returns the
    model (random init, seeded); ``batches(n, dtype)`` returns ``n`` micro-batches
    ``(inputs_tuple, target)``; ``loss(output, target)`` is the training loss. ``heavy``
    models are left out of ``--quick``. ``note``: what is not the stock configuration.
    """

    family: str
    name: str
    source: str
    build: Callable[[torch.dtype], nn.Module]
    batches: Callable[[int, torch.dtype], list]
    loss: Callable[[Any, Any], torch.Tensor]
    heavy: bool = False
    note: str = ""
    size: str = ""  # the input, in words


# ------------------------------------------------------------------------------------ timm
def _timm_case(family: str, entry: sweep_timm.TimmModel, heavy: bool | None = None, note=""):
    def build(dtype):
        return sweep_timm.build(entry).to(dtype)

    def batches(n, dtype):
        return sweep_timm.batches(entry, n, dtype=dtype)

    return Case(
        family,
        entry.name,
        "timm",
        build,
        batches,
        sweep_timm.xent,
        heavy=entry.heavy if heavy is None else heavy,
        note=note,
        size=f"{BATCH}x3x{entry.side}x{entry.side}",
    )


def _timm(family: str, name: str, side: int = 32, heavy: bool = False, note="", **kwargs):
    try:  # the same entry (input size, kwargs) as the fx sweep where it has one
        entry = sweep_timm.by_name(name)
    except KeyError:
        entry = sweep_timm.TimmModel(family, name, side, kwargs, heavy)
    return _timm_case(family, entry, heavy, note)


def _convit_warmed() -> Case:
    """ConViT after one eager forward: its ``rel_indices`` buffer starts as a (1, 1, 1, 3)
    placeholder that the first forward replaces (built with slice assignments); once built,
    the forward has no in-place writes left."""
    entry = sweep_timm.by_name("convit_tiny")

    def build(dtype):
        model = sweep_timm.build(entry).to(dtype)
        with torch.no_grad():
            model.eval()(sweep_timm.batches(entry, 1, seed=99, dtype=dtype)[0][0][0])
        return model.train()

    def batches(n, dtype):
        return sweep_timm.batches(entry, n, dtype=dtype)

    return Case(
        "convit",
        "convit_tiny+warm",
        "timm",
        build,
        batches,
        sweep_timm.xent,
        note="after one eager forward (rel_indices built)",
        size=f"{BATCH}x3x{entry.side}x{entry.side}",
    )


# ----------------------------------------------------------------------------- torchvision
def _seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape: tuple[int, ...], n: int, dtype, classes: int = 10) -> list:
    g = _seeded()
    return [
        (
            (torch.randn(*shape, generator=g, dtype=dtype),),
            torch.randint(0, classes, (BATCH,), generator=g),
        )
        for _ in range(n)
    ]


def _raft_loss(flows, target):
    """RAFT returns one flow per refinement step: the sum of their MSEs to the target flow."""
    return sum(F.mse_loss(f, target) for f in flows)


def _raft_case() -> Case:
    def build(dtype):
        from torchvision.models.optical_flow import raft_small

        torch.manual_seed(0)
        return raft_small(weights=None).to(dtype)

    def batches(n, dtype):
        g = _seeded()
        out = []
        for _ in range(n):
            a, b = (torch.randn(1, 3, 128, 128, generator=g, dtype=dtype) for _ in range(2))
            out.append(((a, b, 2), torch.randn(1, 2, 128, 128, generator=g, dtype=dtype)))
        return out

    return Case(
        "raft",
        "raft_small",
        "torchvision",
        build,
        batches,
        _raft_loss,
        note="num_flow_updates=2; 128x128 is the smallest input its correlation pyramid takes",
        size="two 1x3x128x128 images",
    )


def _swin3d_case() -> Case:
    def build(dtype):
        from torchvision.models.video import swin3d_t

        torch.manual_seed(0)
        return swin3d_t(weights=None, num_classes=10).to(dtype)

    return Case(
        "swin3d",
        "swin3d_t",
        "torchvision",
        build,
        lambda n, dtype: _images((BATCH, 3, 4, 32, 32), n, dtype),
        F.cross_entropy,
        size=f"{BATCH}x3x4x32x32 (clip)",
    )


def _mvit_case() -> Case:
    def build(dtype):
        from torchvision.models.video import mvit

        # mvit_v2_s fixes spatial_size=(224, 224), temporal_size=16 in its builder; the same
        # architecture (block settings, relative positions, residual pooling) on a small clip
        make = mvit._mvit

        def small(**kw):
            return make(**{**kw, "spatial_size": (64, 64), "temporal_size": 4})

        torch.manual_seed(0)
        mvit._mvit = small
        try:
            return mvit.mvit_v2_s(weights=None, num_classes=10).to(dtype)
        finally:
            mvit._mvit = make

    return Case(
        "mvit",
        "mvit_v2_s",
        "torchvision",
        build,
        lambda n, dtype: _images((BATCH, 3, 4, 64, 64), n, dtype),
        F.cross_entropy,
        heavy=True,
        note="built for spatial_size=(64, 64), temporal_size=4",
        size=f"{BATCH}x3x4x64x64 (clip)",
    )


# ---------------------------------------------------------------------------- transformers
VOCAB = 50
SEQ = 8


def _ids(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=_seeded(seed))


def _logits_xent(out, y):
    logits = out.logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _cls_xent(out, y):
    return F.cross_entropy(out.logits, y)


def _hf(cls_name: str, cfg_name: str, **cfg):
    def build(dtype):
        import transformers

        config = getattr(transformers, cfg_name)(**cfg)
        torch.manual_seed(0)
        return getattr(transformers, cls_name)(config).to(dtype)

    return build


def _classify(n, dtype):
    return [((_ids(BATCH, SEQ, seed=s),), torch.tensor([0, 2])) for s in range(2, 2 + n)]


def _causal(n, dtype):
    return [((_ids(BATCH, SEQ, seed=s),), _ids(BATCH, SEQ, seed=s + 10)) for s in range(2, 2 + n)]


def _seq2seq(n, dtype):
    out = []
    for s in range(2, 2 + n):
        src, tgt_in, tgt = (
            _ids(BATCH, SEQ, seed=s),
            _ids(BATCH, 6, seed=s + 1),
            _ids(BATCH, 6, seed=s + 2),
        )
        out.append(((src, None, tgt_in), tgt))
    return out


def _pixels(n, dtype):
    return [((x,), torch.tensor([0, 2])) for (x,), _ in _images((BATCH, 3, 16, 16), n, dtype)]


_SMALL = dict(vocab_size=VOCAB, max_position_embeddings=32)
_DECODER = dict(use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _hf_cases() -> list[Case]:
    bert = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    llama = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    seq = f"{BATCH}x{SEQ} token ids"
    return [
        Case(
            "bert",
            "bert",
            "transformers",
            _hf("BertForSequenceClassification", "BertConfig", num_labels=3, **_SMALL, **bert),
            _classify,
            _cls_xent,
            size=seq,
        ),
        Case(
            "distilbert",
            "distilbert",
            "transformers",
            _hf(
                "DistilBertForSequenceClassification",
                "DistilBertConfig",
                dim=16,
                n_layers=2,
                n_heads=2,
                hidden_dim=32,
                num_labels=3,
                **_SMALL,
            ),
            _classify,
            _cls_xent,
            size=seq,
        ),
        Case(
            "roberta",
            "roberta",
            "transformers",
            _hf(
                "RobertaForSequenceClassification",
                "RobertaConfig",
                num_labels=3,
                pad_token_id=1,
                vocab_size=VOCAB,
                max_position_embeddings=40,
                **bert,
            ),
            _classify,
            _cls_xent,
            size=seq,
        ),
        Case(
            "gpt2",
            "gpt2",
            "transformers",
            _hf(
                "GPT2LMHeadModel",
                "GPT2Config",
                vocab_size=VOCAB,
                n_embd=16,
                n_layer=2,
                n_head=2,
                n_positions=32,
                **_DECODER,
            ),
            _causal,
            _logits_xent,
            size=seq,
        ),
        Case(
            "llama",
            "llama",
            "transformers",
            _hf("LlamaForCausalLM", "LlamaConfig", **_SMALL, **_DECODER, **llama),
            _causal,
            _logits_xent,
            size=seq,
        ),
        Case(
            "mistral",
            "mistral",
            "transformers",
            _hf(
                "MistralForCausalLM",
                "MistralConfig",
                sliding_window=4,
                **_SMALL,
                **_DECODER,
                **llama,
            ),
            _causal,
            _logits_xent,
            note="sliding_window=4 (shorter than the sequence)",
            size=seq,
        ),
        Case(
            "t5",
            "t5",
            "transformers",
            _hf(
                "T5ForConditionalGeneration",
                "T5Config",
                vocab_size=VOCAB,
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_decoder_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                use_cache=False,
                decoder_start_token_id=0,
                pad_token_id=0,
            ),
            _seq2seq,
            _logits_xent,
            size=f"{BATCH}x{SEQ} source, {BATCH}x6 target ids",
        ),
        Case(
            "bart",
            "bart",
            "transformers",
            _hf(
                "BartForConditionalGeneration",
                "BartConfig",
                vocab_size=VOCAB,
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                max_position_embeddings=32,
                use_cache=False,
            ),
            _seq2seq,
            _logits_xent,
            size=f"{BATCH}x{SEQ} source, {BATCH}x6 target ids",
        ),
        Case(
            "hf_vit",
            "hf_vit",
            "transformers",
            _hf(
                "ViTForImageClassification",
                "ViTConfig",
                image_size=16,
                patch_size=4,
                num_channels=3,
                num_labels=3,
                **bert,
            ),
            _pixels,
            _cls_xent,
            size=f"{BATCH}x3x16x16",
        ),
    ]


# ------------------------------------------------------------------------------- the list
# timm: the families tools/sweep_timm.py lists as fx-untraceable (its KNOWN_FAILURES) and the
# ones issue 12 names; same input size and kwargs as the fx sweep where that has the model.
CASES: list[Case] = [
    _timm("efficientnet", "tf_efficientnet_b0"),  # 5.3M, TF "same" padding from x.shape
    _timm("efficientnetv2", "tf_efficientnetv2_b0"),  # 5.9M
    _timm("mobilevit", "mobilevit_xxs"),  # 1.0M, unfold/fold into patches
    _timm("mobilevitv2", "mobilevitv2_050", 64),  # 1.1M, separable linear attention
    _timm("vit_hybrid", "vit_tiny_r_s16_p8_224"),  # 6.1M, ResNetV2 stem + ViT
    _timm("efficientvit_mit", "efficientvit_b0"),  # 2.1M, ReLU linear attention
    _timm("efficientvit_msra", "efficientvit_m0"),  # 2.2M, cascaded group attention
    _timm("convit", "convit_tiny"),  # 5.5M, gated positional self-attention
    _convit_warmed(),
    _timm("tiny_vit", "tiny_vit_5m_224", 64),  # 5.1M, windowed attention, padding from sizes
    _timm("nest", "nest_tiny"),  # 16M, nested blocks
    _timm("cpubone", "cpubone_nano", 64),  # 4.9M
    _timm("twins", "twins_svt_small", heavy=True),  # 24M, locally-grouped attention
    _timm("mvitv2", "mvitv2_tiny", heavy=True),  # 23M, pooling attention
    _timm("hiera", "hiera_tiny_224", heavy=True),  # 27M, unroll/reroll masks
    _timm("nasnet", "nasnetalarge", 64, heavy=True),  # 85M
    _timm("pnasnet", "pnasnet5large", 64, heavy=True),  # 82M
    _timm("qwen3_vit", "qwen3_vit_88m", 64, heavy=True, img_size=64),  # 87M
    _raft_case(),
    _swin3d_case(),
    _mvit_case(),
    *_hf_cases(),
]


def by_name(name: str) -> Case:
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(name)


def front_end(pcm: pccompile.PCModule) -> str:
    """``export`` when the plan's graph came from torch.export (it rebuilds its output from the
    spec export recorded), else ``fx``."""
    return "export" if getattr(pcm.plan.gm, "_out_spec", None) is not None else "fx"


def graph_stats(pcm: pccompile.PCModule) -> dict[str, Any]:
    kinds = [v.kind for v in pcm.plan.vertices]
    return {
        "front_end": front_end(pcm),
        "op_vertices": kinds.count("op"),
        "identity_vertices": kinds.count("identity"),
        "depth": pcm.plan.depth,
    }


def example(case: Case, dtype: torch.dtype) -> tuple:
    return case.batches(1, dtype)[0][0]


def convert_stats(case: Case, mode: str, dtype: torch.dtype, capture: str = "auto") -> dict:
    """Convert one fresh copy of the model (``capture``), timed; the graph's size and, when
    the fx attempt failed, its first line."""
    model = case.build(dtype).train(MODES[mode])
    x = example(case, dtype)
    t0 = time.perf_counter()
    pcm = pccompile.convert(model, x, capture=capture)
    out = {"convert_s": round(time.perf_counter() - t0, 2), **graph_stats(pcm)}
    if out["front_end"] == "export" and capture == "auto":
        try:
            pccompile.convert(case.build(dtype).train(MODES[mode]), x, capture="fx")
        except Exception as e:  # the reason auto fell back
            out["fx_error"] = _fx_reason(e)
    return out


def _fx_reason(e: BaseException) -> str:
    """``Type: first line at file:line`` of a pccompile error; for "Neither front end can
    convert", the torch.export attempt's line (the fx one is in the fx-fallback list)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    export = next((ln for ln in lines if ln.startswith("2. torch.export:")), None)
    if export is not None:
        return f"{type(e).__name__} (both front ends): {export[3:]}"
    head = lines[0] if lines else type(e).__name__
    at = next((ln[3:] for ln in lines if ln.startswith("at ")), "")
    if "/pccompile/" in at:  # pccompile's own frame says nothing about the model
        at = ""
    if "site-packages/" in at:
        at = at.split("site-packages/", 1)[1]
    return f"{type(e).__name__}: {head}" + (f" at {at}" if at else "")


def check(
    case: Case,
    mode: str,
    rule: str,
    schedule: str = "acc2",
    dtype: torch.dtype = torch.float32,
    capture: str = "auto",
):
    """One case through the differential checker; returns the :class:`DiffReport` (or raises)."""
    rule_name, rule_mode = rule.split("/")
    habits = SCHEDULES[schedule]
    model = case.build(dtype)
    data = case.batches(max(2, habits.accumulate), dtype)
    with warnings.catch_warnings():
        # faithful: behind the error front float32 value nodes may overflow and masked scores
        # are -inf; a RuntimeWarning says so, and the updates (read before) are compared below
        warnings.filterwarnings("ignore", "The energy became non-finite", RuntimeWarning)
        return train_against_bp(
            model,
            data,
            case.loss,
            rule_name,
            habits=habits,
            train=MODES[mode],
            convert_options={"capture": capture},
            mode=rule_mode,
        )


def run_case(case: Case, mode: str, rule: str, schedule: str, dtype, timeout: float | None):
    """One row: the checker's verdict, or the exception (with where it came from)."""
    tol = TOL64 if dtype == torch.float64 else TOL32
    row: dict[str, Any] = {
        "family": case.family,
        "model": case.name,
        "source": case.source,
        "mode": mode,
        "rule": rule,
        "schedule": schedule,
        "dtype": str(dtype).removeprefix("torch."),
    }
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sweep_timm.alarm(timeout):
                rep = check(case, mode, rule, schedule, dtype)
        except sweep_timm.CaseTimeout as e:
            row.update(status="timeout", error=f"CaseTimeout: {e}")
        except Exception as e:  # a loud failure: recorded, the sweep goes on
            where = sweep_timm.phase(e)
            row.update(
                status="bp_raises" if where == "bp" else "raises",
                phase=where,
                error_type=type(e).__name__,
                error=_fx_reason(e)[:400],
                raised_at=sweep_timm._innermost(e),
                traceback="".join(traceback.format_exception(e)[-12:])[-4000:],
            )
        else:
            status = "bitwise" if rep.bitwise else ("close" if rep.ok(tol) else "DIVERGES")
            worst_row = max(rep.rows, key=lambda r: r.worst, default=None)
            row.update(
                status=status,
                worst=rep.worst,
                where=worst_row.where if worst_row is not None and worst_row.worst else "",
                kinds=sweep_timm.kinds(rep),
                run_mode=rep.mode,
                problems=rep.problems(tol)[:5],
            )
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught})[:3]
    return row


def run_convert(case: Case, mode: str, dtype, timeout: float | None) -> dict:
    row: dict[str, Any] = {"model": case.name, "mode": mode, "dtype": str(dtype)[6:]}
    try:
        with sweep_timm.alarm(timeout):
            row.update(convert_stats(case, mode, dtype))
    except sweep_timm.CaseTimeout as e:
        row["error"] = f"CaseTimeout: {e}"
    except Exception as e:
        row["error"] = _fx_reason(e)[:600]
        row["raised_at"] = sweep_timm._innermost(e)
    return row


def warm_up() -> None:
    """Convert a two-layer MLP through torch.export once: the first export in a process pays
    one-time costs (lazy imports, caches) that would otherwise be billed to the first model."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    pccompile.convert(net, torch.randn(2, 4), capture="export")


# ------------------------------------------------------------------------- tiny BERT timing
def bert_convert_times(n: int = 5, capture: str = "auto") -> tuple[float, list[float]]:
    """Convert time of a 2-layer tiny BERT (hidden 32, 2 heads, sequence 8, batch 2): the first
    conversion in this process (it pays torch.export's one-time warm-up), then ``n`` more."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    times = []
    for _ in range(n + 1):
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(cfg)
        x = _ids(2, 8, seed=1)
        t0 = time.perf_counter()
        pccompile.convert(model, x, capture=capture)
        times.append(time.perf_counter() - t0)
    return times[0], times[1:]


# ------------------------------------------------------------------------------- markdown
def _fmt(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] == "bitwise":
        return "bitwise"
    if row["status"] in ("close", "DIVERGES"):
        w = row["worst"]
        text = "inf" if math.isinf(w) else f"{w:.1e}"
        return text if row["status"] == "close" else f"**{text}**"
    if row["status"] == "timeout":
        return "timeout"
    if row["status"] == "bp_raises":
        return "BP cannot"
    return f"**{row.get('error_type', row['status'])}**"


def markdown(results: list[dict], converts: list[dict], meta: dict) -> str:
    """The tables: one row per model (front end, graph, convert time, verdicts), then every
    exception with its first line."""
    order = {c.name: i for i, c in enumerate(CASES)}
    models = sorted({r["model"] for r in results} | {c["model"] for c in converts}, key=order.get)
    dtypes = sorted({r["dtype"] for r in results}, key=lambda d: d != "float32")
    rules = [r for r in RULES if any(x["rule"] == r for x in results)]
    short = {"zil/efficient": "zil", "zil/faithful": "zil faithful", "fpa/efficient": "fpa"}
    short["fpa/faithful"] = "fpa faithful"
    cols = [(m, r) for m in ("eval", "train") for r in rules]
    head = ["model", "source", "front end", "ops", "identity", "depth", "convert s"]
    out = [
        "Generated by "
        + ", then ".join(f"`{c}`" for c in meta.get("commands", [meta.get("command")]))
        + f" on {meta.get('date')}: "
        f"torch {meta.get('torch')}, timm {meta.get('timm')}, transformers "
        f"{meta.get('transformers')}, pccompile at `{meta.get('git')}`; one thread. Batch "
        f"{BATCH}, {meta.get('steps')}. `ops`/`identity`: op and identity vertices of the "
        "levelled PC graph (eval mode); `depth`: its depth; `convert s`: `pccompile.convert` "
        "with `capture='auto'` in eval mode (including the failed fx attempt). Verdicts: "
        "`bitwise` (every `.grad`, parameter and buffer equal to BP's after every micro-batch "
        "and step, same RNG), the worst relative difference (bold beyond 1e-5 in float32, "
        "1e-9 in float64), `BP cannot` (the BP copy itself raises: not a pccompile failure), "
        "`timeout`, or the exception pccompile raised; an empty cell was not run.",
        "",
    ]
    for dtype in dtypes:
        rows = {(r["model"], r["mode"], r["rule"]): r for r in results if r["dtype"] == dtype}
        if len(dtypes) > 1:
            out += [f"**{dtype}**", ""]
        hdr = head + [f"{m} {short[r]}" for m, r in cols]
        out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for name in models:
            if not any(k[0] == name for k in rows):
                continue
            c = next((c for c in converts if c["model"] == name and c["mode"] == "eval"), {})
            case = by_name(name)
            cells = [
                name + ("*" if case.note else ""),
                case.source,
                c.get("front_end", "—" if "error" not in c else "fails"),
                str(c.get("op_vertices", "")),
                str(c.get("identity_vertices", "")),
                str(c.get("depth", "")),
                f"{c['convert_s']:.1f}" if "convert_s" in c else "",
            ]
            cells += [_fmt(rows.get((name, m, r))) for m, r in cols]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    notes = [c for c in CASES if c.note and c.name in models]
    if notes:
        out += ["\\* " + "; ".join(f"`{c.name}`: {c.note}" for c in notes) + ".", ""]
    errors = {}
    for r in results:
        if r["status"] in ("raises", "bp_raises", "timeout"):
            errors.setdefault((r["model"], r["error"], r.get("raised_at", "")), []).append(
                f"{r['dtype']} {r['mode']} {short[r['rule']]}"
            )
    if errors:
        out += ["Exceptions (first line, innermost pccompile frame, cases):", ""]
        for (model, err, at), where in errors.items():
            err = (err if len(err) <= 240 else err[:237] + "...").replace("|", "\\|")
            out.append(f"* `{model}`: {err}" + (f" ({at})" if at else "") + f"; {', '.join(where)}")
        out.append("")
    fx = {c["model"]: c["fx_error"] for c in converts if c.get("fx_error") and c["mode"] == "eval"}
    fx = sorted(fx.items(), key=lambda kv: order[kv[0]])
    if fx:
        out += ["Why `capture='auto'` fell back to torch.export (the fx attempt's error):", ""]
        out += [f"* `{m}`: {e.replace('|', chr(92) + '|')[:300]}" for m, e in fx]
        out.append("")
    bert = meta.get("bert_convert_s")
    if bert:
        out.append(
            "Tiny BERT (`BertForSequenceClassification`, 2 layers, hidden 32, 2 heads, sequence "
            f"8, batch 2), `pccompile.convert(model, ids)`: median of {len(bert)} "
            f"**{statistics.median(bert):.2f} s** ({', '.join(f'{t:.2f}' for t in bert)} s); "
            f"the first conversion in a fresh process took {meta['bert_convert_cold_s']:.2f} s "
            f"(torch.export's one-time warm-up). Load average {meta.get('bert_load', 0):.2f} on "
            "two cores."
        )
        out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"


def write_doc(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} region to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


# ----------------------------------------------------------------------------------- main
def _meta(argv, rules, schedule) -> dict:
    import timm
    import transformers

    h = SCHEDULES[schedule]
    return {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "git": sweep_timm._git_head(),
        "python": platform.python_version(),
        "command": "tools/sweep_export.py " + " ".join(_without_out(argv)),
        "steps": f"{h.steps} optimizer steps of {h.accumulate} accumulated micro-batches "
        "(clipping, momentum, weight decay, `set_to_none=False`)",
        "rules": rules,
    }


def _without_out(argv: list[str]) -> list[str]:
    """The command line without ``--out PATH`` / ``--doc PATH`` (where it wrote, not what)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--doc"):
            skip = True
        elif not a.startswith(("--out=", "--doc=")):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated names or families (default: all)")
    ap.add_argument("--quick", action="store_true", help="skip the heavy models")
    ap.add_argument("--modes", default="eval,train")
    ap.add_argument("--rules", default=",".join(DEFAULT_RULES), help=f"from {RULES}")
    ap.add_argument("--faithful", action="store_true", help="add zil/faithful (slow)")
    ap.add_argument("--schedule", default="acc2", choices=sorted(SCHEDULES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--out", default="export_sweep", help="writes OUT.json and OUT.md")
    ap.add_argument("--doc", help="also replace the sweep region of this markdown file")
    ap.add_argument("--timeout-per-case", type=float, default=900.0, help="seconds (0: none)")
    ap.add_argument("--budget", type=float, default=0.0, help="stop starting cases after N s")
    ap.add_argument("--resume", action="store_true", help="keep cases already in OUT.json")
    ap.add_argument("--render", action="store_true", help="rewrite the tables from OUT.json")
    ap.add_argument("--bert-time", action="store_true", help="time tiny BERT's convert, 5 runs")
    ap.add_argument("--list", action="store_true", help="print the model list and exit")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    if args.list:
        for c in CASES:
            heavy = "heavy" if c.heavy else ""
            print(f"{c.source:13s} {c.family:18s} {c.name:24s} {heavy:5s} {c.size}")
        return 0
    torch.set_num_threads(1)
    out = Path(args.out)
    jpath, mpath = out.with_suffix(".json"), out.with_suffix(".md")
    data: dict = {"meta": {}, "results": [], "converts": []}
    if (args.resume or args.render) and jpath.exists():
        data = json.loads(jpath.read_text())
    rules = list(dict.fromkeys(args.rules.split(",") + (["zil/faithful"] if args.faithful else [])))
    if args.render:
        table = markdown(data["results"], data["converts"], data["meta"])
        mpath.write_text(table)
        if args.doc:
            write_doc(Path(args.doc), table)
        print(f"wrote {mpath}" + (f" and {args.doc}" if args.doc else ""))
        return 0
    old = data.get("meta", {})
    meta = {**old, **_meta(argv, rules, args.schedule)}
    before = old.get("commands") or ([old["command"]] if "command" in old else [])
    before = [" ".join(_without_out(c.split())) for c in before]
    meta["commands"] = [*before, meta["command"]]
    data["meta"] = meta

    def save():
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(data, indent=1))
        table = markdown(data["results"], data["converts"], meta)
        mpath.write_text(table)
        if args.doc:
            write_doc(Path(args.doc), table)

    if args.bert_time:
        cold, times = bert_convert_times()
        meta["bert_convert_cold_s"] = round(cold, 3)
        meta["bert_convert_s"] = [round(t, 3) for t in times]
        meta["bert_load"] = os.getloadavg()[0]
        print(
            f"tiny BERT convert: first {cold:.2f} s, then median {statistics.median(times):.2f} s "
            f"of {[round(t, 2) for t in times]} (load average {meta['bert_load']:.2f})"
        )
        save()
        return 0

    warm_up()
    names = [n for n in (args.models or "").split(",") if n]
    cases = [c for c in CASES if not names or c.name in names or c.family in names]
    cases = [c for c in cases if not (args.quick and c.heavy)]
    dtype = getattr(torch, args.dtype)
    timeout = args.timeout_per_case or None
    done = {(r["model"], r["mode"], r["rule"], r["dtype"]) for r in data["results"]}
    converted = {(c["model"], c["mode"], c["dtype"]) for c in data["converts"]}
    t_start = time.perf_counter()
    for case in cases:
        for mode in args.modes.split(","):
            if (case.name, mode, args.dtype) not in converted:
                row = run_convert(case, mode, dtype, timeout)
                data["converts"].append(row)
                print(f"{case.name:24s} {mode:5s} convert {row}", flush=True)
                save()
            for rule in rules:
                if (case.name, mode, rule, args.dtype) in done:
                    continue
                if args.budget and time.perf_counter() - t_start > args.budget:
                    print("budget spent; rerun with --resume")
                    return 0
                row = run_case(case, mode, rule, args.schedule, dtype, timeout)
                data["results"].append(row)
                w = _fmt(row) or row["status"]
                print(
                    f"{case.name:24s} {mode:5s} {rule:14s} {w:12s} {row['seconds']:7.1f}s "
                    f"{row.get('error', '')[:120]}",
                    flush=True,
                )
                save()
    save()
    print(f"done in {time.perf_counter() - t_start:.0f} s; wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
