"""Optional dependencies: which extra brings what, and one way to say that one is missing.

Reads: nothing but the import system. Writes nothing.
Invariants: every message about a missing optional package names the extra to install with the
same words, ``pip install 'pccompile[EXTRA]'``; :func:`require` imports the packages it checks
(so a broken install is caught too) and is called before any long work that needs them.
"""

from __future__ import annotations

import importlib

from .errors import ConfigError

__all__ = ["EXTRAS", "install_hint", "require", "missing"]

# extra -> the import names it provides (pyproject.toml [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "data": ("sklearn", "mnist1d"),
    "plot": ("matplotlib",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "dot": ("pydot",),
    "progress": ("tqdm",),
    "hf": ("transformers",),
}
# import name -> the name pip knows it by, where they differ
_PIP_NAMES = {"sklearn": "scikit-learn"}


def install_hint(extra: str) -> str:
    """``pip install 'pccompile[EXTRA]'``: the one way messages name an install."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    return f"pip install 'pccompile[{extra}]'"


def missing(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported."""
    gone = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            gone.append(name)
    return gone


def require(extra: str, what: str, modules: tuple[str, ...] | list[str] | None = None) -> None:
    """Raise :class:`ConfigError` naming the extra when a module it provides is not installed.

    Args:
        extra: the extra's name (a key of :data:`EXTRAS`).
        what: the feature that needs it, as the message's subject (``"pccompile export"``).
        modules: the import names needed (default: all of the extra's).

    Example:
        >>> require("plot", "plot_trace")   # raises ConfigError without matplotlib
    """
    gone = missing(tuple(EXTRAS[extra] if modules is None else modules))
    if gone:
        names = ", ".join(_PIP_NAMES.get(m, m) for m in gone)
        verb = "is" if len(gone) == 1 else "are"
        raise ConfigError(
            f"{what} needs {names}, which {verb} not installed: {install_hint(extra)}."
        )
