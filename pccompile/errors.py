"""Errors raised by pccompile.

Every message says what happened and how to fix it; where a model node is at fault the
message names it (FX node name, op, and the module path when there is one).
"""

from __future__ import annotations

__all__ = [
    "PCCompileError",
    "TraceError",
    "UnsupportedOpError",
    "ConfigError",
    "InputError",
    "ExactnessError",
    "CheckFailedError",
    "ModelSpecError",
    "RecaptureLimitError",
    "UnreachedWarning",
    "NumericallyUnreachedWarning",
    "DivergenceWarning",
    "LargeStepWarning",
]


class PCCompileError(Exception):
    """Base class of every error pccompile raises on purpose.

    ``cli_words`` maps the Python API's words in the message to the command line's
    (``overwrite=True`` -> ``--force``): the ``pccompile`` command says them its way."""

    cli_words: dict[str, str] = {}


class TraceError(PCCompileError):
    """The model could not be captured as a static graph (data-dependent Python, etc.)."""


class UnsupportedOpError(PCCompileError):
    """A graph node calls an op that has no rule in :mod:`pccompile.ops`."""


class ConfigError(PCCompileError, ValueError):
    """An option or rule configuration is invalid or inconsistent with the graph."""


class InputError(PCCompileError, ValueError):
    """Inputs or targets given to ``learn``/``forward`` do not fit the converted model."""


class ExactnessError(PCCompileError):
    """A setting that cannot give BP's updates was combined with ``require_exact=True``."""


class CheckFailedError(PCCompileError):
    """A result was produced and failed its check (e.g. ONNX output beyond the tolerance); the
    command line exits 1 for these, 2 for every other :class:`PCCompileError`."""


class ModelSpecError(PCCompileError, ValueError):
    """A MODEL spec, input shape or weights file cannot be used (message: what and the fix)."""


class RecaptureLimitError(PCCompileError):
    """The model kept changing after ``convert`` (a guard failed) more often than
    :data:`pccompile.guards.recapture_limit` allows; the message names the guard and the fix."""


class UnreachedWarning(UserWarning):
    """Inference ended before the error reached some parameters (their gradient is zero):
    ``steps`` is smaller than their distance from the output (any rule: IL, iPC, and Z-IL or FPA
    asked for fewer steps than the depth)."""


class NumericallyUnreachedWarning(UserWarning):
    """The graph connects some parameters to the loss, and inference ran long enough for the
    error to arrive, yet their vertex's error is exactly zero at the end: the signal that
    arrived is below the dtype's resolution (``x + delta == x``), so their gradient is zero."""


class DivergenceWarning(RuntimeWarning):
    """The energy rose between two plain gradient steps of inference: the step size is too large
    for this model (a descent step on a smooth energy lowers it for a small enough step)."""


class LargeStepWarning(UserWarning):
    """An inference step size above 1: allowed, but with unit-precision squared errors it
    overshoots a vertex's own error, so inference may oscillate or diverge."""
