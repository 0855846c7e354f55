"""Conversion cost: ``pccompile.convert`` next to a plain ``torch.fx.symbolic_trace`` (issue 5).

Models: torchvision ``resnet50`` and ``vit_b_16`` (``weights=None``, default 1000 classes, train
mode, as constructed), example input one 3x224x224 image (batch 1; vit_b_16's default
``image_size=224``).

Methodology: one untimed warm-up of each call, then ``--repeats`` rounds; each round times
``torch.fx.symbolic_trace(m)`` and ``pccompile.convert(m, x)`` once, each on a fresh
``copy.deepcopy`` of the same freshly built model (the copy is not timed). The report is the
median of each and the ratio convert / symbolic_trace. For context it also times one eager
forward of the example input (``convert`` runs the model once on it to type every value), and
a breakdown of one convert call into its pipeline stages (``capture``, ``annotate``,
``level_graph``, ``compile_plan``, measured by wrapping those names in
``pccompile.api`` for that one untimed-by-the-median call; "n/a" if the pipeline's names change).
Threads: ``--threads`` (default 1, as in ``learn_step.py``).

Issue 5's target: convert resnet50 <= 3x symbolic_trace and < 2 s.

``python benchmarks/convert_time.py`` writes ``benchmarks/results/convert_time.json``;
``learn_step.py`` runs this too unless given ``--no-convert``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torchvision
from report import table  # sibling module: benchmarks/ is on sys.path

import pccompile
import pccompile.api as pc_api

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "convert_time.json"
MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "vit_b_16": lambda: torchvision.models.vit_b_16(weights=None, image_size=224),
}
STAGES = ("capture", "annotate", "level_graph", "compile_plan")
TARGET_RATIO, TARGET_SECONDS = 3.0, 2.0  # resnet50


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _time(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextmanager
def _stage_timer() -> Iterator[dict[str, float]]:
    """Wrap the pipeline stages named in ``pccompile.api`` with timers (restored after)."""
    spent: dict[str, float] = {}
    saved = {name: getattr(pc_api, name) for name in STAGES if hasattr(pc_api, name)}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return timed

    try:
        for name, fn in saved.items():
            setattr(pc_api, name, wrap(name, fn))
        yield spent
    finally:
        for name, fn in saved.items():
            setattr(pc_api, name, fn)


def bench_one(name: str, repeats: int, warmup: int, log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = MODELS[name]()
    x = torch.randn(1, 3, 224, 224)
    for _ in range(warmup):
        fx.symbolic_trace(copy.deepcopy(model))
        pccompile.convert(copy.deepcopy(model), x)
    trace_s, convert_s, forward_s = [], [], []
    for k in range(repeats):
        log(f"[convert {name}] round {k + 1}/{repeats}")
        m = copy.deepcopy(model)
        trace_s.append(_time(lambda m=m: fx.symbolic_trace(m)))
        m = copy.deepcopy(model)
        convert_s.append(_time(lambda m=m: pccompile.convert(m, x)))
        with torch.no_grad():
            forward_s.append(_time(lambda: model(x)))
    with _stage_timer() as spent:
        m = copy.deepcopy(model)
        total = _time(lambda: pccompile.convert(m, x))
    stages = {s: spent.get(s) for s in STAGES}
    stages["total"] = total
    t, c = statistics.median(trace_s), statistics.median(convert_s)
    return {
        "model": name,
        "input_shape": [1, 3, 224, 224],
        "trace_s": trace_s,
        "convert_s": convert_s,
        "forward_s": forward_s,
        "trace_median_s": t,
        "convert_median_s": c,
        "forward_median_s": statistics.median(forward_s),
        "ratio": c / t,
        "stages_s": stages,
    }


def run(
    repeats: int = 5,
    warmup: int = 1,
    models: list[str] | None = None,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Benchmark every model; returns the JSON-ready results."""
    res = [bench_one(n, repeats, warmup, log) for n in (models or list(MODELS))]
    r50 = next((r for r in res if r["model"] == "resnet50"), None)
    target = None
    if r50 is not None:
        target = {
            "ratio_target": TARGET_RATIO,
            "seconds_target": TARGET_SECONDS,
            "ratio_met": r50["ratio"] <= TARGET_RATIO,
            "seconds_met": r50["convert_median_s"] < TARGET_SECONDS,
        }
    return {
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "results": res,
        "resnet50_target": target,
    }


def report(out: dict[str, Any]) -> str:
    rows = []
    for r in out["results"]:
        rows.append(
            [
                r["model"],
                f"{1e3 * r['trace_median_s']:.0f}",
                f"{1e3 * r['convert_median_s']:.0f}",
                f"{r['ratio']:.1f}",
                f"{1e3 * r['forward_median_s']:.0f}",
            ]
        )
    text = table(
        rows, ["model", "symbolic_trace ms", "convert ms", "convert/trace", "one forward ms"]
    )
    stage_rows = []
    for r in out["results"]:
        st = r["stages_s"]
        stage_rows.append(
            [r["model"]]
            + ["n/a" if st[s] is None else f"{1e3 * st[s]:.0f}" for s in (*STAGES, "total")]
        )
    text += "\n\nOne convert call by stage (ms)\n\n"
    text += table(stage_rows, ["model", *STAGES, "total"])
    t = out["resnet50_target"]
    if t is not None:
        yes = lambda ok: "yes" if ok else "NO"
        text += (
            f"\n\nresnet50 target: convert/trace <= {t['ratio_target']:g}: {yes(t['ratio_met'])}; "
            f"convert < {t['seconds_target']:g} s: {yes(t['seconds_met'])}"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise SystemExit(f"unknown model {bad}; choose from {list(MODELS)}")
    torch.set_num_threads(args.threads)
    out = run(args.repeats, args.warmup, names)
    print(report(out))
    out["torch"] = torch.__version__
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    _stderr(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
