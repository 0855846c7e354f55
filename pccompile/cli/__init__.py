"""The ``pccompile`` command line (also ``python -m pccompile``): convert, verify, inspect, export.

``build_parser()`` builds the argparse parser (:mod:`pccompile.cli.parser`); ``main(argv) -> int``
runs one command (:mod:`pccompile.cli.commands`) and returns its exit code, so tests call it
in-process. The library returns values and logs; this package is the only place that prints.

Exit codes: 0 success; 1 a check failed (``verify`` beyond tolerance, ONNX output mismatch);
2 bad input or usage (one line on stderr saying what and the fix; ``--debug`` shows the traceback);
3 an unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..errors import PCCompileError, TraceError
from ..io.onnx import OnnxMismatchError
from ..modelspec import one_line
from .common import EXIT_FAIL, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from .parser import build_parser

__all__ = ["build_parser", "main", "CLIError"]


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
