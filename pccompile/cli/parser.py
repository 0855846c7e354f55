"""The ``pccompile`` argument parser: subcommands convert, verify, inspect and export.

Reads nothing, writes nothing: :func:`build_parser` only describes the options; each
subcommand's ``handler`` default is its function in :mod:`pccompile.cli.commands`.
Invariants: every subcommand takes the model options (MODEL, ``--input-shape``, ``--weights``,
``--dtype``, ...) and the output options (``-q``, ``--json``, ``--debug``); convert and verify
also take the rule options.
"""

from __future__ import annotations

import argparse

from .. import __version__
from ..modelspec import FORMS
from .commands import cmd_convert, cmd_export, cmd_inspect, cmd_verify
from .common import DTYPES

__all__ = ["build_parser"]

Parser = argparse.ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    """The ``pccompile`` argument parser (subcommands convert, verify, inspect, export)."""
    common, rule = _common_options(), _rule_options()
    parser = argparse.ArgumentParser(
        prog="pccompile",
        description="Convert PyTorch models into predictive-coding networks whose Z-IL updates "
        "equal backprop's.",
        epilog="Docs: docs/cli.md. Exit codes: 0 ok, 1 check failed, 2 bad input, 3 internal "
        "error.",
    )
    parser.add_argument("--version", action="version", version=f"pccompile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_convert(sub, common, rule)
    _add_verify(sub, common, rule)
    _add_inspect(sub, common)
    _add_export(sub, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
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
    return common


def _rule_options() -> argparse.ArgumentParser:
    rule = argparse.ArgumentParser(add_help=False)
    r = rule.add_argument_group("rule")
    r.add_argument("--rule", choices=["zil", "fpa", "il", "ipc"], default="zil")
    r.add_argument("--gamma", type=float, help="inference step size (exact only at 1)")
    r.add_argument("--steps", type=int, help="inference steps (default: the rule's)")
    r.add_argument("--mode", choices=["auto", "efficient", "faithful"], help="schedule (zil/fpa)")
    return rule


def _add_convert(sub: argparse._SubParsersAction, common: Parser, rule: Parser) -> None:
    p = sub.add_parser(
        "convert",
        parents=[common, rule],
        help="convert and write weights, graph, code and a manifest to a directory",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.add_argument("--force", action="store_true", help="replace an existing OUTDIR")
    p.set_defaults(handler=cmd_convert)


def _add_verify(sub: argparse._SubParsersAction, common: Parser, rule: Parser) -> None:
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


def _add_inspect(sub: argparse._SubParsersAction, common: Parser) -> None:
    p = sub.add_parser("inspect", parents=[common], help="the PC graph: vertices, levels, steps")
    p.add_argument("--format", choices=["text", "json", "graphml", "dot"], default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write there instead of stdout")
    p.add_argument("--png", metavar="FILE", help="draw the leveled graph (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(handler=cmd_inspect)


def _add_export(sub: argparse._SubParsersAction, common: Parser) -> None:
    p = sub.add_parser("export", parents=[common], help="ONNX: the prediction or the PC energy")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--graph", choices=["predict", "energy"], default="predict")
    p.add_argument(
        "--no-verify", action="store_true", help="skip onnx.checker and the onnxruntime comparison"
    )
    p.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(handler=cmd_export)
