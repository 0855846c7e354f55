"""The ``pccompile`` subcommands: each parses its arguments, calls the library, prints.

Reads: the parsed arguments; the model through :mod:`pccompile.cli.common`.
Writes: stdout (a summary, a table, or one JSON object with ``--json``) and the files the library
writes for the command (:func:`pccompile.io.artifact.save_converted`,
:func:`pccompile.io.render.write_graph` / ``draw_png``, :func:`pccompile.io.onnx.export_onnx`).
Invariants: a command returns its exit code (0 ok, 1 a check failed) and raises on bad input;
:func:`pccompile.cli.main` turns exceptions into one line on stderr and codes 2, 3 or 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..extras import require
from ..io.artifact import check_outdir, save_converted
from ..io.onnx import OnnxExport, export_onnx, require_onnx
from ..io.render import (
    draw_graph,
    figure_format,
    headline,
    mode_text,
    render_graph,
    shape_text,
    write_graph,
)
from ..losses import default_loss
from ..rules import RULES, make_rule
from ..summary import graph_summary
from ..testing import HABITS, DiffReport, Habits, train_against_bp
from ..verify import VerifyResult, verify
from .common import (
    EXIT_FAIL,
    EXIT_OK,
    CLIError,
    Loaded,
    check_outputs,
    convert_loaded,
    emit,
    load_model,
    progress,
    rule_from_args,
)

__all__ = ["cmd_convert", "cmd_verify", "cmd_inspect", "cmd_export"]


# ------------------------------------------------------------------------------------ convert
def cmd_convert(args: argparse.Namespace) -> int:
    """``pccompile convert``: write weights, PC graph, code and manifest to OUTDIR."""
    rule = rule_from_args(args)
    check_outdir(args.output, overwrite=args.force)  # before the work, not after it
    with progress(args, "build model", "convert", "write") as bar:
        with bar.stage("build model"):
            loaded = load_model(args)
        with bar.stage("convert"):
            pcm = convert_loaded(args, loaded, rule)
        extra = {
            "model": str(loaded.spec),
            "num_classes": args.num_classes,
            "weights_source": str(Path(args.weights).resolve()) if args.weights else None,
            "seed": args.seed,
            "config": str(Path(args.config).resolve()) if args.config else None,
        }
        with bar.stage("write"):
            manifest = save_converted(pcm, args.output, overwrite=args.force, extra=extra)
    v = manifest["vertices"]
    args.exit_code = EXIT_OK
    line = (
        f"converted {loaded.spec} ({rule.name}, {args.dtype}, {mode_text(args.train_mode)}, input "
        f"{shape_text(loaded.shapes)}): {v['total']} vertices ({v['op']} op, "
        f"{v['identity']} identity), depth {manifest['depth']}; wrote {args.output}"
    )
    if args.json:
        print(
            json.dumps({"command": "convert", "ok": True, "outdir": str(args.output), **manifest})
        )
    elif args.quiet:
        print(line)
    else:
        print(line)
        for key in ("weights", "graph", "code", "manifest"):
            print(f"  {Path(args.output) / manifest['files'][key]}")
        print(f"reload: pccompile.load_converted({str(args.output)!r})")
    return EXIT_OK


# ------------------------------------------------------------------------------------ verify
def cmd_verify(args: argparse.Namespace) -> int:
    """``pccompile verify``: one learn step with the rule vs bp; exit 0 iff all parameters pass."""
    rule = rule_from_args(args)
    with progress(args, "build model", "convert", "verify") as bar:
        with bar.stage("build model"):
            loaded = load_model(args)
        with bar.stage("convert"):
            pcm = convert_loaded(args, loaded)
        target, loss_fn, loss_text = default_loss(loaded.output, args.seed)
        with bar.stage("verify"):
            res = verify(
                pcm,
                loaded.inputs,
                target,
                loss_fn,
                rule,
                tol=args.tol,
                seed=args.seed,
                progress=bar.note,
            )
            run = None
            if args.train_steps > 0:
                run = train_against_bp(
                    loaded.model,
                    [(tuple(loaded.inputs), target)],
                    loss_fn,
                    rule,
                    habits=Habits(steps=args.train_steps),
                    train=bool(args.train_mode),
                    seed=args.seed,
                    convert_options={
                        "leaf_modules": args.leaf_module,
                        "capture": args.capture,
                        "granularity": args.granularity,
                    },
                    progress=bar.note,
                    callbacks=[HABITS[h] for h in args.habit or ()],
                )
    run_problems = [] if run is None else run.problems(res.tol)
    passed = res.passed and not run_problems
    args.exit_code = EXIT_OK if passed else EXIT_FAIL
    failed = [r.name for r in res.rows if not r.ok]
    verdict = ("PASS" if passed else "FAIL") + (
        f": all {len(res.rows)} parameters within {res.tol:g}"
        if res.passed
        else f": {len(failed)} of {len(res.rows)} parameters beyond {res.tol:g}"
    )
    if args.json:
        training_run = _training_run_report(args, run, run_problems)
        print(json.dumps(_verify_report(args, loaded, rule, res, loss_text, passed, training_run)))
    elif args.quiet and not run_problems:
        print(verdict)
    elif not args.quiet:
        options = {k: v for k, v in dataclasses.asdict(rule).items() if k != "name"}
        if "steps" in options and options["steps"] is None:  # what the graph's default is
            options["steps"] = f"{RULES[rule.name].steps(pcm.plan, rule)} (the default)"
        opts = ", ".join(f"{k}={v}" for k, v in options.items())
        print(
            f"verify {loaded.spec}: rule {res.rule} ({opts}; {res.mode} schedule) vs bp, "
            f"{args.dtype}, {mode_text(args.train_mode)}, input {shape_text(loaded.shapes)}"
        )
        print(
            f"loss: {loss_text} = {res.loss:.6g}; tolerance: relative L1 difference <= {res.tol:g}"
        )
        print(res.table())
        if run is not None:
            print(f"training run: {run.summary()}")
            for line in run_problems:
                print(f"  {line}")
        print(verdict)
    elif run_problems:
        print(verdict + f"; training run: {run_problems[0]}")
    return EXIT_OK if passed else EXIT_FAIL


def _verify_report(
    args: argparse.Namespace,
    loaded: Loaded,
    rule: Any,
    res: VerifyResult,
    loss_text: str,
    passed: bool,
    training_run: dict[str, Any] | None,
) -> dict[str, Any]:
    """``verify --json``'s object."""
    return {
        "command": "verify",
        "ok": True,
        "passed": passed,
        "training_run": training_run,
        "model": str(loaded.spec),
        "rule": res.rule,
        "mode": res.mode,
        "options": dataclasses.asdict(rule),
        "dtype": args.dtype,
        "training": bool(args.train_mode),
        "input_shapes": [list(s) for s in loaded.shapes],
        "loss_fn": loss_text,
        "loss": res.loss,
        "tol": res.tol,
        "failed": [r.name for r in res.rows if not r.ok],
        "params": [
            {
                "name": r.name,
                "shape": list(r.shape),
                "max_abs_diff": r.max_abs,
                "rel_diff": r.rel,
                "ok": r.ok,
            }
            for r in res.rows
        ],
    }


def _training_run_report(
    args: argparse.Namespace, run: DiffReport | None, problems: list[str]
) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "steps": args.train_steps,
        "habits": list(args.habit or ()),
        "worst_rel_diff": run.worst,
        "bitwise": run.bitwise,
        "problems": problems,
    }


# ------------------------------------------------------------------------------------ inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    """``pccompile inspect``: the PC graph as text, JSON, GraphML or DOT, or drawn (PNG, SVG)."""
    drawing = args.format in ("png", "svg")
    if args.format == "dot":
        require("dot", "--format dot (or use --format graphml)")
    if drawing or args.png:
        require("plot", f"--format {args.format}" if drawing else "--png")
    if drawing and not args.output:
        raise CLIError(f"--format {args.format} draws a picture: give the file with -o FILE.")
    if drawing:
        figure_format(args.output, args.format)  # -o g.svg with --format png is refused
    if args.png:
        figure_format(args.png, "png")
    if args.json and args.format in ("graphml", "dot") and not args.output:
        raise CLIError(f"--json prints JSON to stdout, so --format {args.format} needs -o FILE.")
    check_outputs(args, args.output, args.png)  # before the work, not after it
    with progress(args, "build model", "convert", "write") as bar:
        with bar.stage("build model"):
            loaded = load_model(args)
        with bar.stage("convert"):
            pcm = convert_loaded(args, loaded)
            summary = {
                "model": str(loaded.spec),
                "training": bool(args.train_mode),
                "input_shapes": [list(s) for s in loaded.shapes],
                **graph_summary(pcm),
            }
        with bar.stage("write"):
            text = "" if drawing else render_graph(args.format, pcm.graph, summary)
            title = f"PC graph of {loaded.spec} ({mode_text(args.train_mode)})"
            written = []
            if args.output:
                if drawing:
                    draw_graph(pcm.graph, args.output, title, overwrite=args.force)
                else:
                    write_graph(args.format, pcm.graph, text, args.output, overwrite=args.force)
                written.append(str(args.output))
            if args.png:
                draw_graph(pcm.graph, args.png, title, overwrite=args.force)
                written.append(str(args.png))
    args.exit_code = EXIT_OK
    if args.json:
        print(json.dumps({"command": "inspect", "ok": True, **summary, "written": written}))
    elif args.output or args.format in ("json", "graphml", "dot"):
        if not args.output:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        if written:
            emit(args, "wrote " + ", ".join(written))
    elif args.quiet:
        print(headline(summary))
    else:
        print(text)
        if written:
            print("wrote " + ", ".join(written))
    return EXIT_OK


# ------------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> int:
    """``pccompile export``: ONNX of the prediction or of the PC energy, checked by onnxruntime."""
    require_onnx(not args.no_verify, "pccompile export")  # before minutes of work, not after
    check_outputs(args, args.output)
    stages = ["build model", "convert", "export + check" if not args.no_verify else "export"]
    with progress(args, *stages) as bar:
        with bar.stage(stages[0]):
            loaded = load_model(args)
        with bar.stage(stages[1]):
            pcm = convert_loaded(args, loaded)
        target, loss_fn, loss_text = default_loss(loaded.output, args.seed)
        if args.graph != "predict" and not isinstance(loaded.output, torch.Tensor):
            raise CLIError(
                f"--graph {args.graph} needs a model with one tensor output; {loaded.spec} returns "
                f"a {type(loaded.output).__name__}. Wrap it in a module that returns one tensor."
            )
        rule = _export_rule(args)
        with bar.stage(stages[2]):
            res = export_onnx(
                pcm,
                args.output,
                loaded.inputs,
                args.graph,
                target=target,
                loss_fn=loss_fn,
                verify=not args.no_verify,
                tol=args.tol,
                overwrite=args.force,
                seed=args.seed,
                dynamic_batch=not args.static_batch,
                rule=rule,
            )
    check = (
        "not verified (--no-verify)"
        if res.max_abs_diff is None
        else f"onnx.checker ok; onnxruntime vs PyTorch max abs diff {res.max_abs_diff:.3e} "
        f"(<= {res.tol:g})"
    )
    args.exit_code = EXIT_OK
    if args.json:
        print(json.dumps(_export_report(args, loaded, res, loss_text)))
        return EXIT_OK
    print(
        f"wrote {res.path}: {res.graph} graph of {loaded.spec} ({args.dtype}, input "
        f"{shape_text(loaded.shapes)}, {'dynamic' if res.dynamic_batch else 'static'} batch); "
        f"{check}"
    )
    if not args.quiet:
        print(f"  inputs  ({len(res.input_names)}): {_names(res.input_names)}")
        print(f"  outputs ({len(res.output_names)}): {_names(res.output_names)}")
        if res.graph == "energy":
            print(f"  energy = sum 1/2 ||error||^2 + loss; loss: {loss_text}")
        if res.graph in ("learn", "il-learn"):
            levels = ", ".join(f"{k} {v}" for k, v in res.phases.items())
            print(f"  loss: {loss_text}; {res.nodes} nodes ({levels})")
    return EXIT_OK


def _export_rule(args: argparse.Namespace) -> Any:
    """The rule of a learn graph: ``--rule`` (zil or fpa) for ``learn``; IL with ``--gamma`` /
    ``--steps`` for ``il-learn``; None (unused) for the other graphs."""
    if args.graph == "learn":
        return rule_from_args(args)
    if args.graph == "il-learn":
        if args.rule not in ("zil", "il"):  # zil: the option's default, i.e. not given
            raise CLIError(f"--graph il-learn computes IL; --rule {args.rule} does not apply.")
        opts = {k: getattr(args, k) for k in ("gamma", "steps") if getattr(args, k) is not None}
        return make_rule("il", **opts)
    return None


def _export_report(
    args: argparse.Namespace, loaded: Loaded, res: OnnxExport, loss_text: str
) -> dict[str, Any]:
    return {
        "command": "export",
        "ok": True,
        "model": str(loaded.spec),
        "output": res.path,
        "graph": res.graph,
        "dtype": args.dtype,
        "input_shapes": [list(s) for s in loaded.shapes],
        "dynamic_batch": res.dynamic_batch,
        "loss_fn": loss_text if res.graph != "predict" else None,
        "inputs": res.input_names,
        "outputs": res.output_names,
        "verified": res.max_abs_diff is not None,
        "max_abs_diff": res.max_abs_diff,
        "per_output": res.per_output,
        "tol": res.tol,
        "nodes": res.nodes,
        "phases": res.phases,
    }


def _names(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")
