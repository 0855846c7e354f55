"""Results and reports of the benchmarks: the per-rule result record, ratios to ``bp``, the
markdown tables (shared with ``convert_time.py``), the JSON payload's parts and the machine and
git context a run records."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torchvision
from workloads import MODELS, Timing

REPO = Path(__file__).resolve().parent.parent
MIB = float(2**20)

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


def table(rows: list[list[str]], header: list[str]) -> str:
    """A markdown table with aligned columns (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: (
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


# ------------------------------------------------------------------------------------ results
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


# ------------------------------------------------------------------------------------- tables
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
        import convert_time  # sibling script; imported here because it imports this module

        text += "\n\nConversion cost\n\n" + convert_time.report(d["convert"])
    return text


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


# ------------------------------------------------------------------------------------ context
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


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def results_json(results: list[RuleResult]) -> list[dict[str, Any]]:
    """The ``results`` list of the saved JSON: each result with its statistics and ratios."""
    rat = ratios(results)
    return [
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
    ]
