"""What the command line needs before it imports torch: exit codes, the CLI's error type, the
dtype names, and the one-line form of a message.

Reads and writes nothing. Invariants: importing this module imports nothing heavy (no torch, no
numpy), so ``pccompile --help`` and argument errors answer at once.
"""

from __future__ import annotations

import json
from typing import Any

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
    "parse_rule_options",
]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DTYPE_NAMES = ("float32", "float64")


class CLIError(PCCompileError):
    """A command-line problem; the message is one line saying what happened and the fix."""


# rule options whose values are Python objects (callables, optimisers): the Python API only
PYTHON_ONLY_OPTIONS = ("energies", "value_optimizer", "optimizer")


def parse_rule_options(items: list[str] | None) -> dict[str, Any]:
    """``--rule-option KEY=VALUE`` (repeated) as a dict of rule options. VALUE is read as JSON
    where it parses (``0.5``, ``true``, ``null``, ``{"fc2": 4.0}``), else as a string (``free``);
    the rule's config validates it."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CLIError(
                f"--rule-option {item!r}: write KEY=VALUE, e.g. output=free, "
                f"output_precision=0.5, lr=0.01 (iPC), 'precision={{\"fc2\": 4.0}}'."
            )
        if key in PYTHON_ONLY_OPTIONS:
            raise CLIError(
                f"--rule-option {key}: its value is a Python object; set it in Python "
                f"(TrainConfig(rule_options={{{key!r}: ...}}) or pcm.learn({key}=...))."
            )
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message onto one line."""
    return " ".join(str(text).split())
