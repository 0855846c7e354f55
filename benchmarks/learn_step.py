"""Benchmark one PC learning step against plain autograd (issue 5).

What is timed
    One full ``pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=...)`` call: the feed-forward
    pass, PC inference and the write of ``p.grad``. ``pcm.zero_grad()`` (``set_to_none=True``,
    so every rule allocates its gradients inside the step) runs before each step, outside the
    timer. ``bp`` is ``learn(rule="bp")``: the original module's forward and ``loss.backward()``.
    Rules: ``bp``, ``zil`` (``mode="efficient"``), ``zil-faithful`` (``mode="faithful"``),
    ``fpa`` (default mode, which resolves to the efficient fixed point) and ``il``
    (``steps=10``; reported as ``n/a`` if the library raises ``ConfigError`` for it). Models are
    in train mode (BatchNorm batch statistics, dropout on), each with one fixed random batch.

Methodology
    * Per model: convert once (``pccompile.convert(model, x)``, not timed here), then
      ``--warmup`` untimed steps of every fast rule (bp, zil, fpa), round-robin (at least one:
      the first also checks that the rule is available).
    * Timed rounds: in every round each rule runs once, in the same order, so slow drift of the
      machine (thermal, other load) affects every rule equally. At least ``--repeats`` rounds;
      small models get more, until the fast rules' timed steps add up to ``--min-seconds``. The
      report is the median over rounds, the inter-quartile range (IQR, from 4 rounds on), and the
      ratio of the rule's median to ``bp``'s median.
    * Slow rules: faithful Z-IL re-evaluates every vertex at every step (about depth x the work)
      and IL runs 10 synchronous steps, so each runs ``--slow-repeats`` times (default 1;
      alias ``--faithful-repeats``), in the first rounds, with no warm-up of its own (its kernels
      are the ones the fast rules' warm-up already ran). ``--skip-faithful`` drops zil-faithful.
    * Peak memory, CPU: the peak resident set size (RSS) of the process during the step minus
      the RSS just before it. Before the step: ``gc.collect()`` and glibc ``malloc_trim(0)``
      (so freed heap pages go back to the OS and a step cannot hide its allocations in memory
      that an earlier step left cached), read ``VmRSS`` from ``/proc/self/status``, then reset
      the kernel's high-water mark by writing ``5`` to ``/proc/self/clear_refs``; after the step,
      read ``VmHWM``. Where ``clear_refs`` is not writable a thread samples ``/proc/self/statm``
      every 0.5 ms instead. Trimming makes the next step page-fault its memory back in, which
      would bias the time, so for the fast rules memory is measured in separate, untimed rounds
      after the timed ones (``--mem-repeats``, default 3, median; run to run the
      RSS peak of one rule varies by about +-10% on these models); the slow rules' runs measure
      both (the extra page faults are negligible against their run time). RSS counts everything
      the step touches: activations, saved tensors, gradients (``zero_grad`` frees them first),
      the allocator's fragmentation, oneDNN scratch space.
    * Peak memory, CUDA: ``torch.cuda.max_memory_allocated()`` after
      ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before the step, in the same
      rounds as on CPU; timing synchronises before and after the step.
    * Threads: ``--threads`` sets ``torch.set_num_threads`` (default 1). On the 2-vCPU VM of the
      recorded run, 2 threads made the same resnet18 bp step swing between 0.2 s and 3.2 s from
      run to run (user time ~ wall time in the slow runs: apparently one thread stalled on the
      other), while 1 thread held it within ~10%.
    * Python's garbage collector stays enabled during the step (it is part of the real cost);
      ``gc.collect()`` runs before each step, outside the timer.

``--profile`` instead runs cProfile over ``--profile-steps`` steps of ``--profile-rule``
(default zil) and of ``bp`` per model, interleaved, and prints where the time goes (own time in
pccompile, in torch's Python code, in native code) and the functions that dominate.

Unless ``--no-convert`` is given, the conversion-cost benchmark of ``convert_time.py``
(resnet50 and vit_b_16, ``convert`` next to ``torch.fx.symbolic_trace``) runs afterwards.

Files: this script (command line, timing rounds), ``workloads.py`` (models, rules, one step),
``memory.py`` (peak memory), ``report.py`` (results, tables, JSON; shared with
``convert_time.py``) and ``profiling.py`` (``--profile``).

Run ``python benchmarks/learn_step.py --help`` for the options; results go to
``benchmarks/results/learn_step.json``. See ``docs/benchmarks.md`` for a recorded run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from memory import PeakMemory
from profiling import profile
from report import (
    RuleResult,
    git_info,
    learn_tables,
    loadavg,
    machine_info,
    report_saved,
    results_json,
)
from workloads import (
    MODELS,
    RULES,
    ModelSpec,
    RuleSpec,
    Timing,
    Workload,
    make_workload,
    step,
    timed_step,
)

import pccompile

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "learn_step.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ running
def measured_step(w: Workload, r: RuleSpec, pm: PeakMemory) -> tuple[Timing, int | None]:
    """A step with its peak memory measured (timed too; the time is kept for slow rules only)."""
    w.pcm.zero_grad(set_to_none=True)
    with pm.measure() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)
        if pm.device.type == "cuda":
            torch.cuda.synchronize(pm.device)
        t = Timing(time.perf_counter() - t0, time.process_time() - c0, rep.mode)
    return t, out[0]


def _unavailable(res: RuleResult, exc: Exception) -> None:
    res.available, res.error = False, f"{type(exc).__name__}: {exc}"
    log(f"[{res.model}] {res.rule}: n/a ({exc})")


def _warm_up(
    w: Workload, rules: list[RuleSpec], results: dict[str, RuleResult], warmup: int
) -> list[RuleSpec]:
    """The fast rules that are available. The availability probe doubles as the first warm-up
    step of each fast rule; slow rules are probed by their first measured run."""
    fast: list[RuleSpec] = []
    for r in rules:
        if r.slow:
            continue
        try:
            results[r.label].mode = step(w, r).mode
            fast.append(r)
        except pccompile.ConfigError as exc:
            _unavailable(results[r.label], exc)
    for i in range(1, warmup):
        log(f"[{w.spec.name}] warm-up {i + 1}/{warmup}")
        for r in fast:
            step(w, r)
    return fast


def _slow_run(w: Workload, r: RuleSpec, res: RuleResult, pm: PeakMemory) -> bool:
    """One measured run of a slow rule; False if the rule is not available."""
    try:
        t, peak = measured_step(w, r, pm)
    except pccompile.ConfigError as exc:
        _unavailable(res, exc)
        return False
    res.add(t)
    if peak is not None:
        res.peaks_bytes.append(peak)
    log(f"[{w.spec.name}]   {r.label}: {t.wall_s:.2f} s")
    return True


def _timed_rounds(
    w: Workload,
    rules: list[RuleSpec],
    fast: list[RuleSpec],
    results: dict[str, RuleResult],
    args: argparse.Namespace,
    pm: PeakMemory,
) -> None:
    """Every fast rule once per round, in a fixed order; slow rules in the first
    --slow-repeats rounds. Past --repeats, rounds go on until the fast rules' timed steps add up
    to --min-seconds (small models get more rounds), at most 10 x --repeats."""
    slow = [r for r in rules if r.slow]
    k, spent = 0, 0.0
    while (
        k < args.repeats
        or (fast and spent < args.min_seconds and k < 10 * args.repeats)
        or (slow and k < args.slow_repeats)
    ):
        log(f"[{w.spec.name}] round {k + 1}")
        for r in rules:
            res = results[r.label]
            if r in fast:
                t = timed_step(w, r, pm.device)
                res.add(t)
                spent += t.wall_s
            elif r in slow and k < args.slow_repeats and not _slow_run(w, r, res, pm):
                slow.remove(r)
        k += 1


def _memory_rounds(
    w: Workload, fast: list[RuleSpec], results: dict[str, RuleResult], rounds: int, pm: PeakMemory
) -> None:
    for k in range(rounds):
        log(f"[{w.spec.name}] memory round {k + 1}/{rounds}")
        for r in fast:
            _, peak = measured_step(w, r, pm)
            if peak is not None:
                results[r.label].peaks_bytes.append(peak)


def bench_model(
    spec: ModelSpec,
    rules: list[RuleSpec],
    args: argparse.Namespace,
    device: torch.device,
    pm: PeakMemory,
) -> tuple[dict[str, Any], list[RuleResult]]:
    t0 = time.perf_counter()
    w = make_workload(spec, device)
    info = {
        "model": spec.name,
        "input_shape": list(spec.input_shape),
        "depth": w.depth,
        "n_params": sum(p.numel() for p in w.pcm.parameters()),
        "convert_s": time.perf_counter() - t0,
    }
    log(f"[{spec.name}] built and converted in {info['convert_s']:.2f} s (depth {w.depth})")
    results = {r.label: RuleResult(spec.name, r.label) for r in rules}
    fast = _warm_up(w, rules, results, args.warmup)
    _timed_rounds(w, rules, fast, results, args, pm)
    _memory_rounds(w, fast, results, args.mem_repeats, pm)
    info["wall_s"] = time.perf_counter() - t0
    info["loadavg_end"] = loadavg()
    del w
    gc.collect()
    return info, list(results.values())


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    p.add_argument("--rules", default=",".join(RULES), help=f"comma list of {list(RULES)}")
    p.add_argument("--repeats", type=int, default=11, help="min timed rounds (default 11)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed steps per fast rule (default 2; min 1)"
    )
    p.add_argument(
        "--faithful-repeats",
        "--slow-repeats",
        dest="slow_repeats",
        type=int,
        default=1,
        help="runs of the slow rules, zil-faithful (~depth x bp) and il (steps=10) (default 1)",
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="add timed rounds until the fast rules' steps total this per model (default 5)",
    )
    p.add_argument("--skip-faithful", action="store_true", help="drop zil-faithful")
    p.add_argument(
        "--mem-repeats",
        type=int,
        default=3,
        help="memory-measurement rounds, not timed (default 3; median)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument(
        "--no-convert",
        action="store_true",
        help="skip the conversion-cost benchmark (benchmarks/convert_time.py)",
    )
    p.add_argument("--convert-repeats", type=int, default=5)
    p.add_argument(
        "--profile", action="store_true", help="cProfile zil and bp steps instead of benchmarking"
    )
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="print the tables of a saved run and exit"
    )
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--profile-rule", default="zil", choices=[k for k in RULES if k != "bp"])
    p.add_argument("--profile-top", type=int, default=15)
    args = p.parse_args(argv)
    for name in ("repeats", "warmup", "slow_repeats", "mem_repeats", "threads"):
        if getattr(args, name) < (1 if name in ("repeats", "threads") else 0):
            p.error(f"--{name.replace('_', '-')} is too small")
    return args


def _pick(arg: str, table_: dict[str, Any], what: str) -> list[Any]:
    names = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [n for n in names if n not in table_]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {list(table_)}")
    return [table_[n] for n in names]


def _rules(args: argparse.Namespace) -> list[RuleSpec]:
    """The chosen rules, bp first when it is among them (the ratios are to bp)."""
    rules: list[RuleSpec] = _pick(args.rules, RULES, "rule")
    if args.skip_faithful:
        rules = [r for r in rules if r.label != "zil-faithful"]
    if rules and rules[0].label != "bp" and RULES["bp"] in rules:
        rules.remove(RULES["bp"])
        rules.insert(0, RULES["bp"])
    return rules


def _convert_cost(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.no_convert:
        return None
    import convert_time  # sibling script (benchmarks/ is on sys.path when run as a script)

    out = convert_time.run(repeats=args.convert_repeats, warmup=1, log=log)
    print("\nConversion cost\n")
    print(convert_time.report(out))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        print(report_saved(args.report))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    specs: list[ModelSpec] = _pick(args.models, MODELS, "model")
    rules = _rules(args)

    if args.profile:
        profile(specs, args, device)
        return 0

    pm = PeakMemory(device)
    machine = machine_info(device)
    log(
        f"machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} thread(s), device {device}; memory: {pm.method}"
    )
    started = time.perf_counter()
    load_start = loadavg()
    git = git_info()  # now: pccompile is imported from this state of the tree
    infos, results = [], []
    for spec in specs:
        info, res = bench_model(spec, rules, args, device, pm)
        infos.append(info)
        results.extend(res)

    print(
        f"\nLearn step ({device}, {args.threads} thread(s); median of >= {args.repeats} rounds, "
        f"zil-faithful and il {args.slow_repeats}; memory: {pm.method})\n"
    )
    print(learn_tables(results))
    convert_out = _convert_cost(args)

    payload = {
        "benchmark": "learn_step",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "git": git,
        "memory_method": pm.method,
        "models": infos,
        "results": results_json(results),
        "convert": convert_out,
        "wall_s": time.perf_counter() - started,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2))
    log(
        f"\nwrote {args.json} (total {payload['wall_s']:.0f} s; 1/5/15-min load average "
        f"{load_start} at the start, {payload['loadavg_end']} at the end)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
