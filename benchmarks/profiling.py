"""``learn_step.py --profile``: cProfile a rule's steps next to bp's and say where the time goes
(own time in pccompile, in torch's Python code, in native code) and which functions dominate."""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time

import torch
import torch.nn.functional as F
from report import table
from workloads import RULES, ModelSpec, RuleSpec, Workload, make_workload, step


def profile(specs: list[ModelSpec], args: argparse.Namespace, device: torch.device) -> None:
    """cProfile ``--profile-steps`` steps of ``--profile-rule`` (default zil) and of bp per model,
    interleaved step by step (one profiler each, so both see the same machine load); print a
    summary of where the time goes and the top functions."""
    rule, bp = RULES[args.profile_rule], RULES["bp"]
    for spec in specs:
        w = make_workload(spec, device)
        for _ in range(max(args.warmup, 1)):
            step(w, bp), step(w, rule)
        profs, wall = _profiled_steps(w, (bp, rule), args.profile_steps)
        n = args.profile_steps
        print(f"\n=== {spec.name}: {n} steps each of bp and {rule.label}, interleaved ===")
        print(_summary(profs, wall, n))
        for label, prof in profs.items():
            st = pstats.Stats(prof, stream=io.StringIO())
            for key in ("tottime", "cumulative"):
                print(f"\n-- {label}: top {args.profile_top} by {key}, all functions --")
                print(_top(st, key, args.profile_top, n, None))
                if label != "bp":
                    print(f"\n-- {label}: top {args.profile_top} by {key}, inside pccompile --")
                    print(_top(st, key, args.profile_top, n, "pccompile"))
        del w
        gc.collect()


def _profiled_steps(
    w: Workload, rules: tuple[RuleSpec, ...], steps: int
) -> tuple[dict[str, cProfile.Profile], dict[str, float]]:
    """``steps`` rounds of one step per rule, each rule under its own profiler; the profilers and
    the wall-clock seconds each rule's steps took (profiled)."""
    profs = {r.label: cProfile.Profile() for r in rules}
    wall = dict.fromkeys(profs, 0.0)
    for _ in range(steps):
        for r in rules:
            w.pcm.zero_grad(set_to_none=True)
            gc.collect()
            t0 = time.perf_counter()
            profs[r.label].enable()
            w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)
            profs[r.label].disable()
            wall[r.label] += time.perf_counter() - t0
    return profs, wall


def _summary(profs: dict[str, cProfile.Profile], wall: dict[str, float], n: int) -> str:
    rows = []
    for label, prof in profs.items():
        own = _own_by_origin(pstats.Stats(prof, stream=io.StringIO()))
        rows.append(
            [label, f"{1e3 * wall[label] / n:.1f}"]
            + [f"{1e3 * own[k] / n:.1f}" for k in ("pccompile", "torch", "native", "other")]
        )
    header = [
        "rule",
        "ms/step (profiled)",
        "pccompile own",
        "torch Python own",
        "native (C/C++) own",
        "other Python own",
    ]
    return table(rows, header)


def _own_by_origin(st: pstats.Stats) -> dict[str, float]:
    """Own (exclusive) time summed by where the function lives."""
    out = {"pccompile": 0.0, "torch": 0.0, "native": 0.0, "other": 0.0}
    for (file, _line, _func), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        path = file.replace("\\", "/")
        if file == "~":
            out["native"] += tt
        elif "/pccompile/" in path:
            out["pccompile"] += tt
        elif "/torch/" in path:
            out["torch"] += tt
        else:
            out["other"] += tt
    return out


def _top(st: pstats.Stats, key: str, n: int, steps: int, only: str | None) -> str:
    entries = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        path = file.replace("\\", "/")
        if only is not None and f"/{only}/" not in path:
            continue
        short = path.split(f"/{only}/")[-1] if only else _short(path)
        entries.append((tt if key == "tottime" else ct, tt, ct, ncalls, f"{short}:{line}({func})"))
    entries.sort(reverse=True)
    rows = [
        [name, f"{nc / steps:.0f}", f"{1e3 * tt / steps:.2f}", f"{1e3 * ct / steps:.2f}"]
        for _, tt, ct, nc, name in entries[:n]
    ]
    return table(rows, ["function", "calls/step", "own ms/step", "cum ms/step"])


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python"):
        if marker in path:
            return path.split(marker)[-1]
    if "/pccompile/" in path:
        return "pccompile/" + path.split("/pccompile/")[-1]
    return path.split("/")[-1] if path.startswith("/") else path
