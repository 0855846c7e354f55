"""The ``pccompile`` command line (also ``python -m pccompile``): convert, verify, inspect, export.

``build_parser()`` builds the argparse parser; ``main(argv) -> int`` runs one command and returns
its exit code, so tests call it in-process. The library returns values and logs; this module is
the only place that prints.

Exit codes: 0 success; 1 a check failed (``verify`` beyond tolerance, ONNX output mismatch);
2 bad input or usage (one line on stderr saying what and the fix; ``--debug`` shows the traceback);
3 an unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import pccompile

from .errors import PCCompileError, TraceError
from .io.artifact import save_converted
from .io.render import (
    draw_png,
    headline,
    mode_text,
    render_graph,
    shape_text,
    write_graph,
)
from .losses import default_loss
from .modelspec import (
    FORMS,
    ModelSpec,
    Shape,
    build_model,
    check_forward,
    load_weights,
    one_line,
    parse_shapes,
    parse_spec,
    random_inputs,
)
from .summary import graph_summary

__all__ = ["build_parser", "main", "CLIError"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CLIError(PCCompileError):
    """A command-line problem; the message is one line saying what happened and the fix."""


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``pccompile`` argument parser (subcommands convert, verify, inspect, export)."""
    common = argparse.ArgumentParser(add_help=False)
    m = common.add_argument_group("model")
    m.add_argument("model", metavar="MODEL", help=f"one of {FORMS}")
    m.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="input shape, batch first, e.g. 2,3,32,32; repeat for several inputs "
        "(default: 2,3,32,32 for torchvision; a factory's module INPUT_SHAPE)",
    )
    m.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="torchvision: num_classes=N; factories: called with num_classes=N",
    )
    m.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict file (torch.load(weights_only=True), strict keys)",
    )
    m.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    m.add_argument(
        "--train-mode",
        action="store_true",
        help="convert in training mode (BatchNorm batch statistics, dropout)",
    )
    m.add_argument(
        "--leaf-module",
        action="append",
        default=[],
        metavar="NAME",
        help="keep submodule NAME as one opaque vertex (for untraceable code)",
    )
    m.add_argument("--seed", type=int, default=0, help="seed of weights init and random data")
    o = common.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress, no tables")
    o.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    o.add_argument("--debug", action="store_true", help="show tracebacks")

    rule = argparse.ArgumentParser(add_help=False)
    r = rule.add_argument_group("rule")
    r.add_argument("--rule", choices=["zil", "fpa", "il", "ipc"], default="zil")
    r.add_argument("--gamma", type=float, help="inference step size (exact only at 1)")
    r.add_argument("--steps", type=int, help="inference steps (default: the rule's)")
    r.add_argument("--mode", choices=["auto", "efficient", "faithful"], help="schedule (zil/fpa)")

    parser = argparse.ArgumentParser(
        prog="pccompile",
        description="Convert PyTorch models into predictive-coding networks whose Z-IL updates "
        "equal backprop's.",
        epilog="Docs: docs/cli.md. Exit codes: 0 ok, 1 check failed, 2 bad input, 3 internal "
        "error.",
    )
    parser.add_argument("--version", action="version", version=f"pccompile {pccompile.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "convert",
        parents=[common, rule],
        help="convert and write weights, graph, code and a manifest to a directory",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--force", action="store_true", help="replace an existing OUTDIR")
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser(
        "verify",
        parents=[common, rule],
        help="one learn step with the rule vs backprop, per parameter",
    )
    p.add_argument("--tol", type=float, help="relative L1 tolerance (default 1e-4; 1e-10 float64)")
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="N",
        help="also train a BP copy and a PC copy side by side for N optimizer steps (2 "
        "accumulated micro-batches each, clipping, momentum, weight decay) and require every "
        ".grad, parameter and buffer to stay within --tol of BP's (default 0: one step only)",
    )
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("inspect", parents=[common], help="the PC graph: vertices, levels, steps")
    p.add_argument("--format", choices=["text", "json", "graphml", "dot"], default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write there instead of stdout")
    p.add_argument("--png", metavar="FILE", help="draw the leveled graph (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("export", parents=[common], help="ONNX: the prediction or the PC energy")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--graph", choices=["predict", "energy"], default="predict")
    p.add_argument(
        "--no-verify", action="store_true", help="skip onnx.checker and the onnxruntime comparison"
    )
    p.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(handler=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``pccompile`` command and return its exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error argparse printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return args.handler(args)
    except BrokenPipeError:  # stdout closed early (e.g. piped into `head`): stop quietly
        _silence_stdout()
        return EXIT_FAIL
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail(
            args, "interrupted; nothing was written under the requested name.", EXIT_INTERRUPTED
        )
    except (PCCompileError, OSError) as exc:
        if args.debug:
            raise
        from .io.onnx import OnnxMismatchError

        code = EXIT_FAIL if isinstance(exc, OnnxMismatchError) else EXIT_USAGE
        return _fail(args, _message(exc), code)
    except Exception as exc:
        if args.debug:
            raise
        return _fail(
            args,
            f"internal error: {type(exc).__name__}: {one_line(str(exc))[:500]}; "
            f"rerun with --debug for the traceback and report it.",
            EXIT_INTERNAL,
        )


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured): nothing to do
        pass


def _message(exc: BaseException) -> str:
    if isinstance(exc, PCCompileError):
        msg = str(exc)
        if isinstance(exc, TraceError):
            msg += " On the command line: --leaf-module NAME keeps submodule NAME opaque."
        return one_line(msg)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return one_line(f"{exc.strerror or exc}{where}; check the path and its permissions.")
    return one_line(str(exc))


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"pccompile {args.command}: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(
            json.dumps({"command": args.command, "ok": False, "exit_code": code, "error": message})
        )
    return code


# ------------------------------------------------------------------------------------ helpers
class _Progress:
    """One tqdm bar over a command's stages, on stderr; off with --quiet or when not a TTY."""

    def __init__(self, stages: Sequence[str], quiet: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=len(stages),
            disable=True if quiet else None,
            file=sys.stderr,
            leave=False,
            bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed}]",
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description_str(name)
        yield
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _progress(args: argparse.Namespace, *stages: str) -> Iterator[_Progress]:
    bar = _Progress(stages, args.quiet or args.json)
    try:
        yield bar
    finally:
        bar.close()


@dataclass
class Loaded:
    """A model built from the command line, its example inputs and its eval-mode output."""

    spec: ModelSpec
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    shapes: list[Shape]
    dtype: torch.dtype
    output: Any


def _load(args: argparse.Namespace) -> Loaded:
    torch.manual_seed(args.seed)  # reproducible random init
    spec = parse_spec(args.model)
    if args.num_classes is not None and args.num_classes <= 0:
        raise CLIError(f"--num-classes must be positive, got {args.num_classes}.")
    built = build_model(spec, args.num_classes)
    model = built.model
    if args.weights:
        load_weights(model, args.weights)
    dtype = DTYPES[args.dtype]
    model.to(dtype)
    shapes = parse_shapes(args.input_shape) if args.input_shape else built.default_shapes
    if not shapes:
        raise CLIError(
            f"{spec} does not say its input shape; pass --input-shape (batch first, e.g. "
            f"--input-shape 2,3,32,32), or define INPUT_SHAPE = (2, 3, 32, 32) in its module."
        )
    inputs = random_inputs(shapes, dtype, args.seed)
    output = check_forward(model, inputs, training=bool(getattr(args, "train_mode", False)))
    model.train(bool(getattr(args, "train_mode", False)))
    return Loaded(spec, model, inputs, shapes, dtype, output)


def _convert(args: argparse.Namespace, loaded: Loaded, rule: Any = "zil") -> pccompile.PCModule:
    x = loaded.inputs[0] if len(loaded.inputs) == 1 else loaded.inputs
    return pccompile.convert(loaded.model, x, rule, leaf_modules=args.leaf_module)


def _rule(args: argparse.Namespace) -> pccompile.RuleConfig:
    opts = {k: getattr(args, k) for k in ("gamma", "steps", "mode") if getattr(args, k) is not None}
    return pccompile.make_rule(args.rule, **opts)


def _emit(args: argparse.Namespace, text: str) -> None:
    if not (args.quiet or args.json):
        print(text)


# ------------------------------------------------------------------------------------ convert
def cmd_convert(args: argparse.Namespace) -> int:
    """``pccompile convert``: write weights, PC graph, code and manifest to OUTDIR."""
    rule = _rule(args)
    with _progress(args, "build model", "convert", "write") as bar:
        with bar.stage("build model"):
            loaded = _load(args)
        with bar.stage("convert"):
            pcm = _convert(args, loaded, rule)
        extra = {
            "model": str(loaded.spec),
            "num_classes": args.num_classes,
            "weights_source": str(Path(args.weights).resolve()) if args.weights else None,
            "seed": args.seed,
        }
        with bar.stage("write"):
            manifest = save_converted(pcm, args.output, overwrite=args.force, extra=extra)
    v = manifest["vertices"]
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
    from .testing import Habits, train_against_bp
    from .verify import verify

    rule = _rule(args)
    with _progress(args, "build model", "convert", "verify") as bar:
        with bar.stage("build model"):
            loaded = _load(args)
        with bar.stage("convert"):
            pcm = _convert(args, loaded)
        target, loss_fn, loss_text = default_loss(loaded.output, args.seed)
        with bar.stage("verify"):
            res = verify(pcm, loaded.inputs, target, loss_fn, rule, tol=args.tol, seed=args.seed)
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
                    convert_options={"leaf_modules": args.leaf_module},
                )
    run_problems = [] if run is None else run.problems(res.tol)
    res_passed = res.passed and not run_problems
    failed = [r.name for r in res.rows if not r.ok]
    verdict = ("PASS" if res_passed else "FAIL") + (
        f": all {len(res.rows)} parameters within {res.tol:g}"
        if res.passed
        else f": {len(failed)} of {len(res.rows)} parameters beyond {res.tol:g}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "command": "verify",
                    "ok": True,
                    "passed": res_passed,
                    "training_run": None
                    if run is None
                    else {
                        "steps": args.train_steps,
                        "worst_rel_diff": run.worst,
                        "bitwise": run.bitwise,
                        "problems": run_problems,
                    },
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
                    "failed": failed,
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
            )
        )
    elif args.quiet and not run_problems:
        print(verdict)
    elif not args.quiet:
        opts = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(rule).items() if k != "name")
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
    return EXIT_OK if res_passed else EXIT_FAIL


# ------------------------------------------------------------------------------------ inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    """``pccompile inspect``: the PC graph as text, JSON, GraphML or DOT, and optionally a PNG."""
    if args.format == "dot" and importlib.util.find_spec("pydot") is None:
        raise CLIError(
            "--format dot needs pydot, which is not installed: pip install pydot "
            "(or use --format graphml)."
        )
    if args.png and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--png needs matplotlib, which is not installed: pip install matplotlib.")
    if args.json and args.format in ("graphml", "dot") and not args.output:
        raise CLIError(f"--json prints JSON to stdout, so --format {args.format} needs -o FILE.")
    with _progress(args, "build model", "convert", "write") as bar:
        with bar.stage("build model"):
            loaded = _load(args)
        with bar.stage("convert"):
            pcm = _convert(args, loaded)
            summary = {
                "model": str(loaded.spec),
                "training": bool(args.train_mode),
                "input_shapes": [list(s) for s in loaded.shapes],
                **graph_summary(pcm),
            }
        with bar.stage("write"):
            text = render_graph(args.format, pcm.graph, summary)
            written = []
            if args.output:
                write_graph(args.format, pcm.graph, text, args.output, overwrite=args.force)
                written.append(str(args.output))
            if args.png:
                title = f"{loaded.spec} ({mode_text(args.train_mode)})"
                draw_png(pcm.graph, args.png, title, overwrite=args.force)
                written.append(str(args.png))
    if args.json:
        print(json.dumps({"command": "inspect", "ok": True, **summary, "written": written}))
    elif args.output or args.format in ("json", "graphml", "dot"):
        if not args.output:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        if written:
            _emit(args, "wrote " + ", ".join(written))
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
    from .io.onnx import export_onnx

    stages = ["build model", "convert", "export + check" if not args.no_verify else "export"]
    with _progress(args, *stages) as bar:
        with bar.stage(stages[0]):
            loaded = _load(args)
        with bar.stage(stages[1]):
            pcm = _convert(args, loaded)
        target, loss_fn, loss_text = default_loss(loaded.output, args.seed)
        if args.graph == "energy" and not isinstance(loaded.output, torch.Tensor):
            raise CLIError(
                f"--graph energy needs a model with one tensor output; {loaded.spec} returns a "
                f"{type(loaded.output).__name__}. Wrap it in a module that returns one tensor."
            )
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
            )
    check = (
        "not verified (--no-verify)"
        if res.max_abs_diff is None
        else f"onnx.checker ok; onnxruntime vs PyTorch max abs diff {res.max_abs_diff:.3e} "
        f"(<= {res.tol:g})"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "command": "export",
                    "ok": True,
                    "model": str(loaded.spec),
                    "output": res.path,
                    "graph": res.graph,
                    "dtype": args.dtype,
                    "input_shapes": [list(s) for s in loaded.shapes],
                    "loss_fn": loss_text if res.graph == "energy" else None,
                    "inputs": res.input_names,
                    "outputs": res.output_names,
                    "verified": res.max_abs_diff is not None,
                    "max_abs_diff": res.max_abs_diff,
                    "per_output": res.per_output,
                    "tol": res.tol,
                }
            )
        )
        return EXIT_OK
    print(
        f"wrote {res.path}: {res.graph} graph of {loaded.spec} ({args.dtype}, input "
        f"{shape_text(loaded.shapes)}); {check}"
    )
    if not args.quiet:
        print(f"  inputs  ({len(res.input_names)}): {_names(res.input_names)}")
        print(f"  outputs ({len(res.output_names)}): {_names(res.output_names)}")
        if res.graph == "energy":
            print(f"  energy = sum 1/2 ||error||^2 + loss; loss: {loss_text}")
    return EXIT_OK


def _names(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")
