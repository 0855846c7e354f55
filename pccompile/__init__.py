"""pccompile: compile any PyTorch ``nn.Module`` into a predictive-coding network.

``convert(model, example_inputs)`` captures the model with ``torch.fx`` (or ``torch.export``
where fx cannot trace it), gives every operation a value node and an error node, levels the
graph, and returns a :class:`PCModule` whose ``learn(...)`` trains by PC inference; with the
``zil`` rule its updates equal backprop's.

Names and submodules are loaded on first use (PEP 562 ``__getattr__``): ``import pccompile`` does
not import torch, so the ``pccompile`` command starts fast, and ``pccompile.plot`` or
``pccompile.io`` work after a plain ``import pccompile``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .api import CaptureOptions, convert, unconvert
    from .engine.inference import Inference
    from .errors import (
        ConfigError,
        DivergenceWarning,
        ExactnessError,
        InputError,
        NumericallyUnreachedWarning,
        PCCompileError,
        TraceError,
        UnreachedWarning,
        UnsupportedOpError,
    )
    from .io.artifact import load_converted, save_converted
    from .module import PCModule
    from .rules import (
        BP,
        EPC,
        FPA,
        IL,
        IPC,
        MCPC,
        ZIL,
        LearnReport,
        RuleConfig,
        Trace,
        make_rule,
    )
    from .rules.custom import energy_function

__all__ = [
    "convert",
    "unconvert",
    "load_converted",
    "save_converted",
    "PCModule",
    "CaptureOptions",
    "LearnReport",
    "Trace",
    "Inference",
    "BP",
    "ZIL",
    "FPA",
    "IL",
    "IPC",
    "EPC",
    "MCPC",
    "RuleConfig",
    "make_rule",
    "energy_function",
    "PCCompileError",
    "TraceError",
    "UnsupportedOpError",
    "ConfigError",
    "InputError",
    "ExactnessError",
    "UnreachedWarning",
    "NumericallyUnreachedWarning",
    "DivergenceWarning",
    "LargeStepWarning",
]

# public name -> the submodule that defines it
_HOME = {
    "convert": "api",
    "unconvert": "api",
    "CaptureOptions": "api",
    "load_converted": "io.artifact",
    "save_converted": "io.artifact",
    "PCModule": "module",
    "Inference": "engine.inference",
    **{n: "rules" for n in ("LearnReport", "Trace", "BP", "ZIL", "FPA", "IL", "IPC")},
    **{n: "rules" for n in ("EPC", "MCPC")},
    "energy_function": "rules.custom",
    **{n: "rules" for n in ("RuleConfig", "make_rule")},
    **{
        n: "errors"
        for n in (
            "PCCompileError",
            "TraceError",
            "UnsupportedOpError",
            "ConfigError",
            "InputError",
            "ExactnessError",
            "UnreachedWarning",
            "NumericallyUnreachedWarning",
            "DivergenceWarning",
            "LargeStepWarning",
        )
    },
}

try:  # the installed distribution's version (pyproject.toml), one source of truth
    __version__ = version("pccompile")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """Load a public name, or a submodule (``pccompile.plot``), on first access."""
    home = _HOME.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists but something it imports does not
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
