"""The ``pccompile`` command line (also ``python -m pccompile``): convert, verify, inspect, export,
train.

``build_parser()`` builds the argparse parser (:mod:`pccompile.cli.parser`); ``main(argv) -> int``
runs one command (:mod:`pccompile.cli.commands`) and returns its exit code, so tests call it
in-process. The library returns values and logs; this package is the only place that prints.

Start-up is lazy: this module and the parser import neither torch nor the commands, so
``--help``, ``--version`` and usage errors answer at once; the commands (and torch) are imported
after the arguments are parsed, inside the same error handling as the command itself (Ctrl-C
while torch loads is one line and exit 130).

Exit codes: 0 success; 1 a check failed (``verify`` beyond tolerance, ONNX output mismatch);
2 bad input or usage (one line on stderr saying what and the fix); 3 an unexpected internal
error; 130 interrupted. ``--debug`` adds the traceback and keeps the code. A closed stdout
(``pccompile verify ... | head``) is not a failure: the command's own code is returned.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Callable

from ..errors import CheckFailedError, PCCompileError, TraceError
from .base import (
    EXIT_FAIL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    one_line,
)
from .parser import build_parser

__all__ = ["build_parser", "main", "CLIError"]

_LOG_HANDLER = "pccompile-cli"


def main(argv: list[str] | None = None) -> int:
    """Run one ``pccompile`` command and return its exit code (see the module docstring)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error argparse printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("pccompile: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    _configure_logging(args)
    args.exit_code = None  # a command sets it once its result is known (before printing it)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            done = _starting(args)
            try:
                handler = pkgutil.resolve_name(args.handler)  # imports the commands and torch
            finally:  # erased before the command's output, or before an import error's line
                done()
            code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # stdout closed early (`| head`): not a failure of the command
        _silence_stdout()
        return args.exit_code if args.exit_code is not None else EXIT_OK
    except KeyboardInterrupt:
        return _fail(
            args, "interrupted; nothing was written under the requested name.", EXIT_INTERRUPTED
        )
    except (PCCompileError, OSError) as exc:
        code = EXIT_FAIL if isinstance(exc, CheckFailedError) else EXIT_USAGE
        return _fail(args, _message(exc), code)
    except Exception as exc:
        return _fail(
            args,
            f"internal error: {type(exc).__name__}: {one_line(str(exc))[:500]}; "
            f"rerun with --debug for the traceback and report it.",
            EXIT_INTERNAL,
        )


def _starting(args: argparse.Namespace) -> Callable[[], None]:
    """On a terminal: one line on stderr while the commands and torch import (seconds of
    silence otherwise), erased once they have; returns what erases it. Nothing with -q, --json
    or when stderr is not a terminal."""
    stream = sys.stderr
    if args.quiet or getattr(args, "json", False) or not stream.isatty():
        return lambda: None
    text = f"pccompile {args.command}: starting (importing torch) ..."
    stream.write(text)
    stream.flush()

    def erase() -> None:
        stream.write("\r" + " " * len(text) + "\r")
        stream.flush()

    return erase


def _warning_line(command: str) -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: ``pccompile verify: warning: ...`` on one
    line, without the library's source path and line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(str(message))
        print(f"pccompile {command}: warning: {category.__name__}: {text}", file=sys.stderr)

    return show


def _configure_logging(args: argparse.Namespace) -> None:
    """-v: pccompile's INFO messages on stderr; -vv or --debug: DEBUG, every library's."""
    level = logging.DEBUG if (args.debug or args.verbose >= 2) else logging.INFO
    for logger in (logging.getLogger(), logging.getLogger("pccompile")):  # an earlier main()'s
        for h in [h for h in logger.handlers if h.get_name() == _LOG_HANDLER]:
            logger.removeHandler(h)
            logger.setLevel(logging.NOTSET if logger.name == "pccompile" else logging.WARNING)
    if not (args.debug or args.verbose):
        return
    logger = logging.getLogger() if level == logging.DEBUG else logging.getLogger("pccompile")
    logger.setLevel(level)
    handler = _StderrHandler()
    handler.set_name(_LOG_HANDLER)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests capture it per call)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured): nothing to do
        pass


def _message(exc: BaseException) -> str:
    if isinstance(exc, PCCompileError):
        msg = str(exc)
        for api, cli in exc.cli_words.items():  # overwrite=True -> --force
            msg = msg.replace(api, cli)
        if isinstance(exc, TraceError):
            msg += " On the command line: --leaf-module NAME keeps submodule NAME opaque"
            msg += "; --capture export uses torch.export." if "capture='export'" in msg else "."
        return one_line(msg)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return one_line(f"{exc.strerror or exc}{where}; check the path and its permissions.")
    return one_line(str(exc))


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if getattr(args, "debug", False) and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    print(f"pccompile {args.command}: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        try:
            print(
                json.dumps(
                    {"command": args.command, "ok": False, "exit_code": code, "error": message}
                )
            )
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
    return code
