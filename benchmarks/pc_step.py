"""Issue 14's table: one PC training step against one BP step, pccompile's rows, one command.

What is timed
    One ``pcm.learn(x, target=y, loss_fn=F.cross_entropy, rule=...)`` call (feed-forward pass,
    inference, ``p.grad`` written; iPC also steps the weights), ``pcm.zero_grad()`` and
    ``gc.collect()`` before it, outside the timer (``workloads.timed_step``). ``bp`` is
    ``learn(rule="bp")``: the original module's forward and ``loss.backward()``. Every row of a
    model is timed against the ``bp`` of the same model in the same process.

Rows (issue 14; ``gamma = 0.1`` for IL and iPC)
    * ``mlp``: MLP 64-128-128-10 (ReLU), batch 64: zil; IL T = 5, 10, 20; iPC T = 20.
    * ``wide``: MLP 512-1024-1024-10 (ReLU), batch 256: zil; IL T = 20.
    * ``cnn``: four blocks conv3x3 -> ReLU -> maxpool2 (3 -> 16 -> 32 -> 64 -> 128 channels) on
      3x32x32 images and a Linear head (512 -> 10), batch 64: IL T = 20. Converted for IL one
      vertex per block (granularity ``layer``: the conv and the parameter-free ops after it).
    * ``resnet18``: torchvision, ``weights=None, num_classes=10``, 32x3x32x32, **eval mode**, its
      BatchNorms folded into the convolutions (``torch.fx.experimental.optimization.fuse``,
      exact in eval mode), the setting of the recorded run (the compiled loop then refused
      BatchNorm vertices; it takes eval-mode ones now). IL with ``T`` = the converted plan's
      depth; its target is per inference step, ``time / (T * bp time)``. ``--resnet-bn`` keeps
      the BatchNorms instead (eval mode).
    * ``lstm``: ``workloads.LSTMClassifier`` (``nn.LSTM(32, 128)``, a Linear head), sequence 32,
      batch 64: zil unrolled (one vertex per time step) and zil with ``granularity="layer"`` (the
      ``nn.LSTM`` one vertex running torch's fused sequence kernel, row ``layer``).

    IL and iPC run on ``convert(model, x, rule="il")`` (one vertex per layer), zil on
    ``convert(model, x, rule="zil")`` (one vertex per op, levelled): both share the model's
    parameters. iPC steps the weights inside inference with ``lr = 0.01`` (``IPC(lr=...)``: the
    form the compiled loop supports), in both loops. Each IL/iPC row runs twice: the eager fused
    loop (``compile=False``) and the whole T-step loop compiled (``compile=True``, inductor;
    ``--backend`` picks another ``torch.compile`` backend, ``--no-compile`` drops these rows).

Method (as ``learn_step.py``)
    * Per model: build (seed 0, one fixed random batch), convert, then ``--warmup`` untimed steps
      of every row, round-robin. A compiled row compiles in its first call: its
      ``report.compile_seconds`` (and the first call's wall time) are reported in their own
      column, never in the step time. If dynamo compiles again during the timed rounds the
      JSON says so (``recompiled_during_timing``).
    * Timed rounds: every row once per round, in a fixed order (bp first), so drift of the
      machine hits all rows alike. At least ``--repeats`` rounds, more until the rows' timed
      steps add up to ``--min-seconds`` (at most ``10 x --repeats`` rounds).
    * Reported: median wall time, IQR, ratio of medians to bp, and the paired ratio (median and
      IQR of the per-round ratios ``t_row[k] / t_bp[k]``). Targets are judged on the ratio of
      medians; the paired ratio is the check on it (on a loaded machine read both).
    * One thread (``--threads``, default 1), as the other benchmarks here.

``--quick``: 1 warm-up, 3 rounds, no minimum time (a smoke run, not a measurement).
Results go to ``--json`` (default ``benchmarks/results/pc_step.json``); ``--report JSON``
prints a saved run's tables again. Run as a file: ``python benchmarks/pc_step.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torchvision
from report import RuleResult, git_info, loadavg, machine_info, ratios, table
from workloads import LSTMClassifier, ModelSpec, RuleSpec, Workload, step, timed_step

import pccompile

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "pc_step.json"
GAMMA = 0.1
IPC_LR = 0.01


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ models
def mlp(dims: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


def cnn4() -> nn.Module:
    """Four conv3x3-ReLU-maxpool2 blocks on 3x32x32 (16, 32, 64, 128 channels), Linear head."""
    layers: list[nn.Module] = []
    c = 3
    for co in (16, 32, 64, 128):
        layers += [nn.Conv2d(c, co, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = co
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 2 * 2, 10))


def resnet18(fold_bn: bool) -> nn.Module:
    m = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    if fold_bn:
        from torch.fx.experimental.optimization import fuse

        m = fuse(m)  # conv + eval-mode BatchNorm -> one conv (a GraphModule)
    return m


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("mlp", lambda: mlp((64, 128, 128, 10)), (64, 64)),
        ModelSpec("wide", lambda: mlp((512, 1024, 1024, 10)), (256, 512)),
        ModelSpec("cnn", cnn4, (64, 3, 32, 32)),
        ModelSpec("lstm", LSTMClassifier, (64, 32, 32)),  # batch 64, sequence 32, features 32
        ModelSpec("resnet18", lambda: resnet18(True), (32, 3, 32, 32)),  # last: longest compile
    ]
}
WHOLE_LAYER = {"lstm"}  # zil also with granularity="layer": the recurrent module one vertex
EVAL_MODE = {"resnet18"}  # compile=True refuses train-mode BatchNorm (and dropout)

# (model, rule, T) -> issue 14's target for the ratio to bp; "depth" = T is the plan's depth,
# the target per inference step.
DEPTH = -1
RULE_ROWS: dict[str, list[tuple[str, int | None]]] = {
    "mlp": [("zil", None), ("il", 5), ("il", 10), ("il", 20), ("ipc", 20)],
    "wide": [("zil", None), ("il", 20)],
    "cnn": [("il", 20)],
    "resnet18": [("il", DEPTH)],
    "lstm": [("zil", None)],
}
TARGETS: dict[tuple[str, str, int | None], float] = {
    ("mlp", "zil", None): 1.1,
    ("mlp", "il", 20): 4.0,
    ("mlp", "ipc", 20): 6.0,
    ("wide", "il", 20): 8.0,
    ("resnet18", "il", DEPTH): 0.6,  # per inference step
    ("lstm", "zil", None): 1.2,
}
# Issue 14's table as filed (pccompile before the fused/compiled loops, pcx, fabricpc).
ISSUE = {
    ("mlp", "il", 5): ("5.9", "2.5", "2.5"),
    ("mlp", "il", 10): ("11.5", "3.1", "3.3"),
    ("mlp", "il", 20): ("22.7", "5.0", "5.3"),
    ("mlp", "ipc", 20): ("32.3", "6.9", "-"),
    ("mlp", "zil", None): ("1.7", "-", "-"),
    ("wide", "il", 20): ("18.8", "12.8", "8.9"),
    ("wide", "zil", None): ("1.1", "-", "-"),
    ("cnn", "il", 20): ("15.2", "9.5", "21.6"),
    ("lstm", "zil", None): ("1.72", "-", "-"),
}


# ------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One timed row: a rule (config) on one of the model's converted modules."""

    model: str
    rule: str  # bp | zil | il | ipc
    steps: int | None
    loop: str  # autograd | eager | compiled (+ backend)
    w: Workload
    spec: RuleSpec
    target: float | None
    per_step: bool  # target on time / (steps * bp)
    result: RuleResult = field(init=False)
    compile_s: float | None = None  # report.compile_seconds of the compiling call
    first_call_s: float | None = None

    def __post_init__(self) -> None:
        self.result = RuleResult(self.model, self.label)

    @property
    def label(self) -> str:
        t = "" if self.steps is None else f" T={self.steps}"
        if self.rule in ("il", "ipc"):
            return f"{self.rule}{t} {self.loop}"
        return f"{self.rule} layer vertices" if self.loop == "layer" else self.rule


def make_rows(name: str, args: argparse.Namespace, device: torch.device) -> tuple[list[Row], dict]:
    spec = MODELS[name]
    if name == "resnet18" and args.resnet_bn:
        spec = ModelSpec("resnet18", lambda: resnet18(False), spec.input_shape)
    torch.manual_seed(0)
    model = spec.build().to(device)
    model.train(name not in EVAL_MODE)
    x = torch.randn(*spec.input_shape, device=device)
    y = torch.randint(0, spec.n_classes, (spec.input_shape[0],), device=device)
    wanted = [(r, t) for r, t in RULE_ROWS[name] if r in args.rules]
    t0 = time.perf_counter()
    need_il = any(r != "zil" for r, _ in wanted)
    need_zil = any(r == "zil" for r, _ in wanted) or not need_il  # bp runs on either
    pcm_il = pccompile.convert(model, x, rule="il") if need_il else None
    pcm_zil = pccompile.convert(model, x, rule="zil") if need_zil else None
    for pcm in (pcm_il, pcm_zil):
        if pcm is not None:
            pcm.train(name not in EVAL_MODE)
    info = {
        "model": name,
        "input_shape": list(spec.input_shape),
        "mode": "eval" if name in EVAL_MODE else "train",
        "depth_il": None if pcm_il is None else pcm_il.plan.depth,
        "vertices_il": None if pcm_il is None else len(pcm_il.plan.vertices),
        "depth_zil": None if pcm_zil is None else pcm_zil.plan.depth,
        "vertices_zil": None if pcm_zil is None else len(pcm_zil.plan.vertices),
        "n_params": sum(p.numel() for p in model.parameters()),
        "convert_s": time.perf_counter() - t0,
    }
    w_il = None if pcm_il is None else Workload(spec, pcm_il, x, y, pcm_il.plan.depth)
    w_zil = None if pcm_zil is None else Workload(spec, pcm_zil, x, y, pcm_zil.plan.depth)
    w_bp = w_il if w_il is not None else w_zil
    assert w_bp is not None
    rows = [Row(name, "bp", None, "autograd", w_bp, RuleSpec("bp", "bp"), None, False)]
    for rule, steps in wanted:
        target = TARGETS.get((name, rule, steps))
        if rule == "zil":
            w = Workload(spec, pcm_zil, x, y, pcm_zil.plan.depth)
            rows.append(
                Row(name, "zil", None, "efficient", w, RuleSpec("zil", "zil"), target, False)
            )
            if name in WHOLE_LAYER:  # also one vertex per nn.LSTM: torch's fused kernel
                whole = pccompile.convert(model, x, rule="zil", granularity="layer")
                w = Workload(spec, whole, x, y, whole.plan.depth)
                row = Row(name, "zil", None, "layer", w, RuleSpec("zil", "zil"), target, False)
                rows.append(row)
            continue
        assert w_il is not None
        t = w_il.depth if steps == DEPTH else steps
        loops: list[tuple[str, bool | str]] = [("eager", False)]
        if not args.no_compile:
            loops.append(
                ("compiled" if args.backend == "inductor" else f"compiled:{args.backend}", True)
            )
        for loop, compiled in loops:
            backend: bool | str = (
                (args.backend if args.backend != "inductor" else True) if compiled else False
            )
            if rule == "il":
                cfg = pccompile.IL(steps=t, gamma=GAMMA, compile=backend)
            else:
                cfg = pccompile.IPC(steps=t, gamma=GAMMA, lr=IPC_LR, compile=backend)
            rows.append(
                Row(
                    name,
                    rule,
                    t,
                    loop,
                    w_il,
                    RuleSpec(f"{rule}{t}{loop}", cfg),
                    target,
                    steps == DEPTH,
                )
            )
    return rows, info


# ----------------------------------------------------------------------------------- timing
def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def bench_model(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[dict, list[Row]]:
    t0 = time.perf_counter()
    rows, info = make_rows(name, args, device)
    log(
        f"[{name}] converted in {info['convert_s']:.2f} s (il: depth {info['depth_il']}, "
        f"{info['vertices_il']} vertices; zil: depth {info['depth_zil']})"
    )
    live: list[Row] = []
    for row in rows:  # the first warm-up call; compiles the compiled rows
        try:
            c0 = time.perf_counter()
            rep = step(row.w, row.spec)
            row.first_call_s = time.perf_counter() - c0
            row.result.mode = rep.mode
            if row.loop.startswith("compiled"):
                row.compile_s = rep.compile_seconds
                log(f"[{name}] {row.label}: compiled in {row.compile_s:.1f} s")
            live.append(row)
        except pccompile.ConfigError as exc:
            row.result.available, row.result.error = False, f"{type(exc).__name__}: {exc}"
            log(f"[{name}] {row.label}: n/a ({exc})")
    for i in range(1, args.warmup):
        log(f"[{name}] warm-up {i + 1}/{args.warmup}")
        for row in live:
            step(row.w, row.spec)
    graphs = _dynamo_graphs()
    k, spent = 0, 0.0
    while k < args.repeats or (spent < args.min_seconds and k < 10 * args.repeats):
        for row in live:
            t = timed_step(row.w, row.spec, device)
            row.result.add(t)
            spent += t.wall_s
        k += 1
        if k % 10 == 0 or k == args.repeats:
            log(f"[{name}] round {k} ({spent:.1f} s timed)")
    info["rounds"] = k
    info["recompiled_during_timing"] = _dynamo_graphs() - graphs
    info["wall_s"] = time.perf_counter() - t0
    info["loadavg_end"] = loadavg()
    return info, rows


# ------------------------------------------------------------------------------------ report
def _f(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def row_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    """Each row's statistics and ratios (the JSON's ``rows`` and the tables' source)."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        rat = ratios([r.result for r in mine])
        for r in mine:
            q = rat[(r.model, r.result.rule)]
            per = r.steps if r.per_step else 1
            judged = None if q.wall is None else q.wall / per
            out.append(
                {
                    "model": r.model,
                    "row": r.label,
                    "rule": r.rule,
                    "steps": r.steps,
                    "loop": r.loop,
                    "mode": r.result.mode,
                    "available": r.result.available,
                    "error": r.result.error,
                    "times_s": r.result.times_s,
                    "cpu_s": r.result.cpu_s,
                    "n": len(r.result.times_s),
                    "median_ms": r.result.median_ms,
                    "iqr_ms": r.result.iqr_ms,
                    "ratio_bp": q.wall,
                    "cpu_ratio_bp": q.cpu,
                    "paired_ratio_bp_quartiles": q.paired,
                    "per_step": r.per_step,
                    "ratio_judged": judged,
                    "paired_judged": None if q.paired is None else [p / per for p in q.paired],
                    "target": r.target,
                    "met": None if r.target is None or judged is None else judged <= r.target,
                    "compile_s": r.compile_s,
                    "first_call_s": r.first_call_s,
                    "issue14": None
                    if r.loop == "layer"
                    else ISSUE.get((r.model, r.rule, DEPTH if r.per_step else r.steps)),
                }
            )
    return out


def _met(d: dict) -> str:
    if d["target"] is None:
        return ""
    return "n/a" if d["met"] is None else ("yes" if d["met"] else "NO")


def tables(ds: list[dict]) -> str:
    head = [
        "model",
        "row",
        "n",
        "median ms",
        "IQR ms",
        "x bp",
        "paired x bp (IQR)",
        "per step x bp",
        "compile s",
        "target",
        "met",
    ]
    rows = []
    for d in ds:
        if not d["available"]:
            rows.append([d["model"], d["row"], "0"] + ["n/a"] * 6 + [_tgt(d), "n/a"])
            continue
        p = d["paired_ratio_bp_quartiles"]
        rows.append(
            [
                d["model"],
                d["row"],
                str(d["n"]),
                _f(d["median_ms"], ".2f"),
                _f(d["iqr_ms"], ".2f"),
                _f(d["ratio_bp"], ".2f"),
                "n/a" if p is None else f"{p[1]:.2f} ({p[0]:.2f}-{p[2]:.2f})",
                "" if not d["steps"] else _f(_div(d["ratio_bp"], d["steps"]), ".3f"),
                _f(d["compile_s"], ".1f") if d["loop"].startswith("compiled") else "",
                _tgt(d),
                _met(d),
            ]
        )
    text = table(rows, head)
    cmp: dict[tuple[str, str], dict[str, str]] = {}
    issue: dict[tuple[str, str], list[str]] = {}
    for d in ds:
        if d["issue14"] is None:
            continue
        key = (d["model"], d["rule"] + ("" if d["steps"] is None else f" T={d['steps']}"))
        loop = "compiled" if d["loop"].startswith("compiled") else "eager"
        cmp.setdefault(key, {})[loop] = _f(d["ratio_bp"], ".2f")
        issue[key] = d["issue14"]
    if cmp:
        text += "\n\nAgainst issue 14 as filed (ratio to a BP step in the same framework)\n\n"
        text += table(
            [[*k, v.get("eager", "-"), v.get("compiled", "-"), *issue[k]] for k, v in cmp.items()],
            ["model", "row", "eager", "compiled", "issue 14 pccompile", "pcx", "fabricpc"],
        )
    return text


def _div(a: float | None, b: float) -> float | None:
    return None if a is None else a / b


def _tgt(d: dict) -> str:
    if d["target"] is None:
        return ""
    return f"<= {d['target']}" + (" per step" if d["per_step"] else "")


def report_saved(path: Path) -> str:
    d = json.loads(path.read_text())
    m = d["machine"]
    return (
        f"{d['command']} ({d['date']}; git {d.get('git', {}).get('commit', '?')[:7]}; "
        f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, {m['torch_threads']} thread(s);"
        f" load {d['loadavg_start']} -> {d['loadavg_end']})\n\n" + tables(d["rows"])
    )


# -------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {list(MODELS)}")
    p.add_argument("--rules", default="zil,il,ipc", help="comma list of zil, il, ipc (bp always)")
    p.add_argument("--no-compile", action="store_true", help="drop the compiled rows")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--resnet-bn", action="store_true", help="resnet18 with its BatchNorms")
    p.add_argument("--repeats", type=int, default=11, help="min timed rounds (default 11)")
    p.add_argument("--min-seconds", type=float, default=10.0, help="per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row (default 2)")
    p.add_argument("--quick", action="store_true", help="1 warm-up, 3 rounds: a smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--report", type=Path, metavar="JSON", help="print a saved run and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats, args.min_seconds = 1, 3, 0.0
    args.models = _names(p, args.models, list(MODELS), "model")
    args.rules = _names(p, args.rules, ["zil", "il", "ipc"], "rule")
    if args.repeats < 1 or args.warmup < 1 or args.threads < 1:
        p.error("--repeats, --warmup and --threads must be >= 1")
    return args


def _names(p: argparse.ArgumentParser, arg: str, allowed: list[str], what: str) -> list[str]:
    names = [s.strip() for s in arg.split(",") if s.strip()]
    if bad := [n for n in names if n not in allowed]:
        p.error(f"unknown {what} {bad}; choose from {allowed}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        print(report_saved(args.report))
        return 0
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    machine = machine_info(device)
    log(
        f"machine: {machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} thread(s), device {device}"
    )
    started, load_start, git = time.perf_counter(), loadavg(), git_info()
    command = " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])

    def save(rows: list[Row], infos: list[dict], complete: bool) -> dict:
        """The JSON, rewritten after every model (a run cut short keeps what it measured)."""
        payload = {
            "benchmark": "pc_step",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine,
            "git": git,
            "complete": complete,
            "models": infos,
            "rows": row_dicts(rows),
            "wall_s": time.perf_counter() - started,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        return payload

    infos: list[dict] = []
    rows: list[Row] = []
    for name in args.models:
        info, r = bench_model(name, args, device)
        infos.append(info)
        rows.extend(r)
        save(rows, infos, complete=False)
        gc.collect()
    payload = save(rows, infos, complete=True)
    print(f"\nOne training step vs one BP step ({device}, {args.threads} thread(s))\n")
    print(tables(payload["rows"]))
    log(
        f"\nwrote {args.json} (total {payload['wall_s']:.0f} s; 1/5/15-min load average "
        f"{load_start} at the start, {payload['loadavg_end']} at the end)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
