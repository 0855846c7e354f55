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

Run ``python benchmarks/learn_step.py --help`` for the options; results go to
``benchmarks/results/learn_step.json``. See ``docs/benchmarks.md`` for a recorded run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import ctypes.util
import datetime as _dt
import gc
import io
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from convert_time import table  # sibling script: benchmarks/ is on sys.path

import pccompile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "learn_step.json"
MIB = float(2**20)


# ------------------------------------------------------------------------------------ models
class LSTMClassifier(nn.Module):
    """nn.LSTM (input 32, hidden 128, batch_first) and a Linear head on the last time step."""

    def __init__(self, n_in: int = 32, hidden: int = 128, n_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def mlp() -> nn.Module:
    """784-1024-1024-1024-10 with ReLU."""
    dims = [784, 1024, 1024, 1024]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], 10))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # batch first
    n_classes: int = 10


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("mlp", mlp, (256, 784)),
        ModelSpec(
            "resnet18",
            lambda: torchvision.models.resnet18(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec(
            "vgg11_bn",
            lambda: torchvision.models.vgg11_bn(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec(
            "mobilenet_v2",
            lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
            (32, 3, 32, 32),
        ),
        ModelSpec("lstm", LSTMClassifier, (64, 32, 32)),  # batch 64, sequence 32, features 32
    ]
}


# ------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class RuleSpec:
    label: str  # what the table shows
    rule: str  # pcm.learn(rule=...)
    options: dict[str, Any] = field(default_factory=dict)
    slow: bool = False  # ~depth x or ~steps x bp: --slow-repeats runs, memory measured in them


RULES: dict[str, RuleSpec] = {
    r.label: r
    for r in [
        RuleSpec("bp", "bp"),
        RuleSpec("zil", "zil", {"mode": "efficient"}),
        RuleSpec("zil-faithful", "zil", {"mode": "faithful"}, slow=True),
        RuleSpec("fpa", "fpa"),
        RuleSpec("il", "il", {"steps": 10}, slow=True),
    ]
}

# Issue 5's targets: (time ratio to bp, peak-memory ratio to bp); None = report only.
TARGETS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "zil": {
        "mlp": (1.15, 1.2),
        "resnet18": (1.05, 1.2),
        "vgg11_bn": (1.05, 1.2),
        "mobilenet_v2": (1.15, 1.2),
        "lstm": (1.3, 1.2),
    },
    "fpa": {m: (1.15, 1.3) for m in MODELS},
}


# ------------------------------------------------------------------------------------ memory
class _Libc:
    """glibc's ``malloc_trim`` when available (Linux/glibc); a no-op elsewhere."""

    def __init__(self) -> None:
        self.trim: Callable[[int], int] | None = None
        name = ctypes.util.find_library("c")
        with contextlib.suppress(OSError, AttributeError):
            self.trim = ctypes.CDLL(name).malloc_trim if name else None

    def malloc_trim(self) -> None:
        if self.trim is not None:
            self.trim(0)


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    if m is None:
        raise OSError(f"{field_name} not in /proc/self/status")
    return int(m.group(1))


def _statm_rss_bytes(page: int) -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page


class PeakMemory:
    """Peak memory added by one step, in bytes; see the module docstring for the method."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = _Libc()
        self.method = "none"
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
        elif self._can_reset_hwm():
            self.method = "RSS high-water mark (VmHWM after clear_refs=5) minus VmRSS before"
        elif os.path.exists("/proc/self/statm"):
            self.method = "RSS sampled every 0.5 ms from /proc/self/statm, minus RSS before"
        if device.type == "cpu" and self.libc.trim is not None:
            self.method += "; gc.collect + malloc_trim(0) before"

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_kib("VmHWM")
            return True
        except OSError:
            return False

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int | None]]:
        """``with pm.measure() as out:`` ... ``out[0]`` is the peak increase (or None)."""
        out: list[int | None] = [None]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            yield out
            torch.cuda.synchronize(self.device)
            out[0] = torch.cuda.max_memory_allocated(self.device) - before
            return
        gc.collect()
        self.libc.malloc_trim()
        if self.method.startswith("RSS high-water"):
            before = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            yield out
            out[0] = (_status_kib("VmHWM") - before) * 1024
        elif self.method.startswith("RSS sampled"):
            page = os.sysconf("SC_PAGE_SIZE")
            before = _statm_rss_bytes(page)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _statm_rss_bytes(page))
                    time.sleep(0.0005)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            try:
                yield out
            finally:
                stop.set()
                th.join()
            out[0] = max(peak[0], _statm_rss_bytes(page)) - before
        else:
            yield out


# ------------------------------------------------------------------------------------ running
@dataclass
class Workload:
    spec: ModelSpec
    pcm: pccompile.PCModule
    x: torch.Tensor
    y: torch.Tensor
    depth: int


def make_workload(spec: ModelSpec, device: torch.device, seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    model = spec.build().to(device).train()
    x = torch.randn(*spec.input_shape, device=device)
    y = torch.randint(0, spec.n_classes, (spec.input_shape[0],), device=device)
    pcm = pccompile.convert(model, x)
    pcm.train()
    return Workload(spec, pcm, x, y, pcm.plan.depth)


def step(w: Workload, r: RuleSpec) -> pccompile.LearnReport:
    w.pcm.zero_grad(set_to_none=True)
    return w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)


@dataclass
class Timing:
    wall_s: float  # time.perf_counter
    cpu_s: float  # time.process_time: CPU time of this process (all its threads)
    mode: str  # the mode the rule ran in (LearnReport.mode)


def timed_step(w: Workload, r: RuleSpec, device: torch.device) -> Timing:
    w.pcm.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    rep = w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Timing(time.perf_counter() - t0, time.process_time() - c0, rep.mode)


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


@dataclass
class RuleResult:
    model: str
    rule: str
    mode: str = ""
    available: bool = True
    error: str = ""
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peaks_bytes: list[int] = field(default_factory=list)

    def add(self, t: Timing) -> None:
        self.times_s.append(t.wall_s)
        self.cpu_s.append(t.cpu_s)
        self.mode = t.mode

    @property
    def median_ms(self) -> float | None:
        return 1e3 * statistics.median(self.times_s) if self.times_s else None

    @property
    def cpu_ms(self) -> float | None:
        return 1e3 * statistics.median(self.cpu_s) if self.cpu_s else None

    @property
    def iqr_ms(self) -> float | None:
        if len(self.times_s) < 4:
            return None
        q = statistics.quantiles(self.times_s, n=4)
        return 1e3 * (q[2] - q[0])

    @property
    def peak_mib(self) -> float | None:
        return statistics.median(self.peaks_bytes) / MIB if self.peaks_bytes else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unavailable(res: RuleResult, exc: Exception) -> None:
    res.available, res.error = False, f"{type(exc).__name__}: {exc}"
    log(f"[{res.model}] {res.rule}: n/a ({exc})")


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

    # Availability probe (doubles as the first warm-up step of each fast rule; slow rules are
    # probed by their first measured run).
    fast: list[RuleSpec] = []
    slow = [r for r in rules if r.slow]
    for r in rules:
        if r.slow:
            continue
        try:
            results[r.label].mode = step(w, r).mode
            fast.append(r)
        except pccompile.ConfigError as exc:
            _unavailable(results[r.label], exc)

    for i in range(1, args.warmup):
        log(f"[{spec.name}] warm-up {i + 1}/{args.warmup}")
        for r in fast:
            step(w, r)

    # Timed rounds: every fast rule once per round, in a fixed order; slow rules in the first
    # --slow-repeats rounds. Past --repeats, rounds go on until the fast rules' timed steps add up
    # to --min-seconds (small models get more rounds), at most 10 x --repeats.
    k, spent = 0, 0.0
    while (
        k < args.repeats
        or (fast and spent < args.min_seconds and k < 10 * args.repeats)
        or (slow and k < args.slow_repeats)
    ):
        log(f"[{spec.name}] round {k + 1}")
        for r in rules:
            res = results[r.label]
            if r in fast:
                t = timed_step(w, r, device)
                res.add(t)
                spent += t.wall_s
            elif r in slow and k < args.slow_repeats:
                try:
                    t, peak = measured_step(w, r, pm)
                except pccompile.ConfigError as exc:
                    _unavailable(res, exc)
                    slow.remove(r)
                    continue
                res.add(t)
                if peak is not None:
                    res.peaks_bytes.append(peak)
                log(f"[{spec.name}]   {r.label}: {t.wall_s:.2f} s")
        k += 1

    for k in range(args.mem_repeats):
        log(f"[{spec.name}] memory round {k + 1}/{args.mem_repeats}")
        for r in fast:
            _, peak = measured_step(w, r, pm)
            if peak is not None:
                results[r.label].peaks_bytes.append(peak)
    info["wall_s"] = time.perf_counter() - t0
    info["loadavg_end"] = _loadavg()
    del w
    gc.collect()
    return info, list(results.values())


# ------------------------------------------------------------------------------------ report
def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


@dataclass(frozen=True)
class Ratios:
    """A rule against bp on the same model (None where either is missing).

    ``wall``/``cpu``/``mem``: the rule's median over bp's median. ``paired``: quartiles
    (q1, median, q3) of the per-round ratios ``t_rule[k] / t_bp[k]`` (the two steps of a round ran
    back to back, so slow drift cancels); fast rules only, from 4 rounds on.
    """

    wall: float | None
    cpu: float | None
    mem: float | None
    paired: tuple[float, float, float] | None = None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paired(r: RuleResult, b: RuleResult | None) -> tuple[float, float, float] | None:
    if b is None or len(r.times_s) != len(b.times_s) or len(r.times_s) < 4:
        return None
    q = statistics.quantiles([x / y for x, y in zip(r.times_s, b.times_s, strict=True)], n=4)
    return (q[0], q[1], q[2])


def ratios(results: list[RuleResult]) -> dict[tuple[str, str], Ratios]:
    base = {r.model: r for r in results if r.rule == "bp"}
    out = {}
    for r in results:
        b = base.get(r.model)
        out[(r.model, r.rule)] = Ratios(
            _ratio(r.median_ms, b.median_ms if b else None),
            _ratio(r.cpu_ms, b.cpu_ms if b else None),
            _ratio(r.peak_mib, b.peak_mib if b else None),
            _paired(r, b),
        )
    return out


RESULT_HEADER = [
    "model",
    "rule",
    "mode",
    "n",
    "median ms",
    "IQR ms",
    "time/bp",
    "CPU ms",
    "CPU/bp",
    "peak MiB",
    "mem/bp",
]


def result_table(results: list[RuleResult]) -> str:
    rat = ratios(results)
    rows = []
    for r in results:
        q = rat[(r.model, r.rule)]
        if not r.available:
            rows.append([r.model, r.rule, "-", "0"] + ["n/a"] * (len(RESULT_HEADER) - 4))
            continue
        rows.append(
            [
                r.model,
                r.rule,
                r.mode,
                str(len(r.times_s)),
                _fmt(r.median_ms, ".1f"),
                _fmt(r.iqr_ms, ".1f"),
                _fmt(q.wall, ".3f"),
                _fmt(r.cpu_ms, ".1f"),
                _fmt(q.cpu, ".3f"),
                _fmt(r.peak_mib, ".1f"),
                _fmt(q.mem, ".3f"),
            ]
        )
    return table(rows, RESULT_HEADER)


def target_table(results: list[RuleResult]) -> str:
    """Issue 5's targets against the measured ratios: time on the ratio of wall-clock medians;
    the CPU-time ratio and the paired per-round ratio (median and IQR) are shown next to it."""
    rat = ratios(results)
    rows = []
    for rule, per_model in TARGETS.items():
        for model, (tt, mt) in per_model.items():
            if (model, rule) not in rat:
                continue
            q = rat[(model, rule)]
            rows.append(
                [
                    model,
                    rule,
                    f"<= {tt}",
                    _fmt(q.wall, ".3f"),
                    _verdict(None if tt is None or q.wall is None else q.wall <= tt),
                    _fmt(q.cpu, ".3f"),
                    _verdict(None if tt is None or q.cpu is None else q.cpu <= tt),
                    "n/a" if q.paired is None else "{1:.3f} ({0:.3f}-{2:.3f})".format(*q.paired),
                    f"<= {mt}",
                    _fmt(q.mem, ".3f"),
                    _verdict(None if mt is None or q.mem is None else q.mem <= mt),
                ]
            )
    if not rows:
        return ""
    header = [
        "model",
        "rule",
        "time target",
        "time/bp",
        "met",
        "CPU/bp",
        "met (CPU)",
        "paired time/bp (IQR)",
        "mem target",
        "mem/bp",
        "met",
    ]
    return table(rows, header)


def learn_tables(results: list[RuleResult]) -> str:
    text = result_table(results)
    targets = target_table(results)
    if targets:
        text += "\n\nIssue 5 targets\n\n" + targets
    return text


def report_saved(path: Path) -> str:
    """The tables of a run saved by this script (``--report``)."""
    d = json.loads(path.read_text())
    keys = {f.name for f in fields(RuleResult)}
    results = [RuleResult(**{k: v for k, v in r.items() if k in keys}) for r in d["results"]]
    m = d["machine"]
    text = (
        f"{d['command']} ({d['date']}; git {d.get('git', {}).get('commit', '?')[:7]}; "
        f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} thread(s),"
        f" device {m['device']})\n\n" + learn_tables(results)
    )
    if d.get("convert"):
        import convert_time  # sibling script

        text += "\n\nConversion cost\n\n" + convert_time.report(d["convert"])
    return text


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            cpu = m.group(1).strip()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_info() -> dict[str, Any]:
    """HEAD and the tracked files under pccompile/ that differ from it (untracked files ignored)."""

    def run(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout

    try:
        changed = run("status", "--porcelain", "--untracked-files=no", "--", "pccompile")
        return {"commit": run("rev-parse", "HEAD").strip(), "modified": changed.split("\n")[:-1]}
    except OSError:
        return {}


# ------------------------------------------------------------------------------------ profile
def profile(specs: list[ModelSpec], args: argparse.Namespace, device: torch.device) -> None:
    """cProfile ``--profile-steps`` steps of ``--profile-rule`` (default zil) and of bp per model,
    interleaved step by step (one profiler each, so both see the same machine load); print a
    summary of where the time goes and the top functions."""
    rule, bp = RULES[args.profile_rule], RULES["bp"]
    for spec in specs:
        w = make_workload(spec, device)
        for _ in range(max(args.warmup, 1)):
            step(w, bp), step(w, rule)
        profs = {bp.label: cProfile.Profile(), rule.label: cProfile.Profile()}
        wall = dict.fromkeys(profs, 0.0)
        for _ in range(args.profile_steps):
            for r in (bp, rule):
                w.pcm.zero_grad(set_to_none=True)
                gc.collect()
                t0 = time.perf_counter()
                profs[r.label].enable()
                w.pcm.learn(w.x, target=w.y, loss_fn=F.cross_entropy, rule=r.rule, **r.options)
                profs[r.label].disable()
                wall[r.label] += time.perf_counter() - t0
        n = args.profile_steps
        print(f"\n=== {spec.name}: {n} steps each of bp and {rule.label}, interleaved ===")
        rows = []
        for label, prof in profs.items():
            st = pstats.Stats(prof, stream=io.StringIO())
            own = _own_by_origin(st)
            rows.append(
                [label, f"{1e3 * wall[label] / n:.1f}"]
                + [f"{1e3 * own[k] / n:.1f}" for k in ("pccompile", "torch", "native", "other")]
            )
        print(
            table(
                rows,
                [
                    "rule",
                    "ms/step (profiled)",
                    "pccompile own",
                    "torch Python own",
                    "native (C/C++) own",
                    "other Python own",
                ],
            )
        )
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


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _pick(arg: str, table_: dict[str, Any], what: str) -> list[Any]:
    names = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [n for n in names if n not in table_]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {list(table_)}")
    return [table_[n] for n in names]


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
    rules: list[RuleSpec] = _pick(args.rules, RULES, "rule")
    if args.skip_faithful:
        rules = [r for r in rules if r.label != "zil-faithful"]
    if rules and rules[0].label != "bp" and RULES["bp"] in rules:
        rules.remove(RULES["bp"])
        rules.insert(0, RULES["bp"])

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
    load_start = _loadavg()
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

    convert_out: dict[str, Any] | None = None
    if not args.no_convert:
        import convert_time  # sibling script (benchmarks/ is on sys.path when run as a script)

        convert_out = convert_time.run(repeats=args.convert_repeats, warmup=1, log=log)
        print("\nConversion cost\n")
        print(convert_time.report(convert_out))

    rat = ratios(results)
    payload = {
        "benchmark": "learn_step",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "git": git,
        "memory_method": pm.method,
        "models": infos,
        "results": [
            {
                "model": r.model,
                "rule": r.rule,
                "mode": r.mode,
                "available": r.available,
                "error": r.error,
                "times_s": r.times_s,
                "median_ms": r.median_ms,
                "iqr_ms": r.iqr_ms,
                "time_ratio_bp": rat[(r.model, r.rule)].wall,
                "cpu_s": r.cpu_s,
                "cpu_ms": r.cpu_ms,
                "cpu_ratio_bp": rat[(r.model, r.rule)].cpu,
                "paired_ratio_bp_quartiles": rat[(r.model, r.rule)].paired,
                "peaks_bytes": r.peaks_bytes,
                "peak_mib": r.peak_mib,
                "mem_ratio_bp": rat[(r.model, r.rule)].mem,
            }
            for r in results
        ],
        "convert": convert_out,
        "wall_s": time.perf_counter() - started,
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
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
