"""What the command line needs before it imports torch: exit codes, the CLI's error type, the
dtype names, and the one-line form of a message.

Reads and writes nothing. Invariants: importing this module imports nothing heavy (no torch, no
numpy), so ``pccompile --help`` and argument errors answer at once.
"""

from __future__ import annotations

from ..errors import PCCompileError

__all__ = [
    "EXIT_OK",
    "EXIT_FAIL",
    "EXIT_USAGE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "DTYPE_NAMES",
    "CLIError",
    "one_line",
]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DTYPE_NAMES = ("float32", "float64")


class CLIError(PCCompileError):
    """A command-line problem; the message is one line saying what happened and the fix."""


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message onto one line."""
    return " ".join(str(text).split())
