"""pccompile: compile any PyTorch ``nn.Module`` into a predictive-coding network.

``convert(model, example_inputs)`` traces the model with ``torch.fx``, gives every operation a
value node and an error node, levels the graph, and returns a :class:`PCModule` whose
``learn(...)`` trains by PC inference; with the ``zil`` rule its updates equal backprop's.
"""

from .api import CaptureOptions, convert, unconvert
from .errors import (
    ConfigError,
    ExactnessError,
    InputError,
    PCCompileError,
    TraceError,
    UnsupportedOpError,
)
from .io.artifact import load_converted, save_converted
from .module import PCModule
from .rules import BP, FPA, IL, IPC, ZIL, LearnReport, RuleConfig, Trace, make_rule

__all__ = [
    "convert",
    "unconvert",
    "load_converted",
    "save_converted",
    "PCModule",
    "CaptureOptions",
    "LearnReport",
    "Trace",
    "BP",
    "ZIL",
    "FPA",
    "IL",
    "IPC",
    "RuleConfig",
    "make_rule",
    "PCCompileError",
    "TraceError",
    "UnsupportedOpError",
    "ConfigError",
    "InputError",
    "ExactnessError",
]

__version__ = "0.1.0"
