"""The op catalogue: every rule in :mod:`pccompile.ops` with a single-op model that is checked,
or a recorded reason why not. Test data about torch ops, not library runtime: importing
``pccompile`` does not import it. ``tests/test_ops_coverage.py`` parametrises over it and
``tools/gen_ops_table.py`` writes docs/ops.md from it.

The check (:func:`check_case`): a model ``forward(*x) = op(x_1 * s_1, ..., x_k * s_k)`` whose
scales ``s_i`` are parameters of ones (so there is something to learn even for ops without
weights, and every argument's Jacobian is exercised) is converted; its forward must equal the
plain call and one ``zil`` learn step must equal ``bp`` in float64 (every gradient, the buffers
and the global RNG state afterwards). The loss is a fixed weighted sum of every floating output,
so tuple outputs (``max``, ``sort``, RNN states) need nothing special.

Cases come from, in order: ``MODULE_CASES`` (a constructor for every ``torch.nn`` class in the
registry, or a reason in ``MODULE_SKIPS``); ``FUNCTION_CASES`` (hand-written calls for ops that
need particular arguments: convolutions, norms, losses, indexing, linear algebra); and a probe
that tries the fixed ``PATTERNS`` on every other function and Tensor method in eager mode and
keeps the first one that gives a finite, differentiable floating output. Every case is run once
in eager mode with warnings as errors before it becomes a test, and the op must appear in the
converted graph, so a case never tests something other than its op. PyTorch's OpInfo database
is not used: it needs ``expecttest`` (not a dependency) and its import changes global torch
flags.

Modules: ``base`` (arguments, cases, the single-op model, the eager check), ``functions`` and
``modules`` (hand-written cases), ``skips`` (reasons), ``probe``, ``entries`` (the catalogue),
``check``.

The ATen part (``aten``, ``aten_sources``, the cached call sites ``aten_sites.pt``): every ATen
overload the ``torch.export`` front end produces for a fixed list of source models, each
checked single-op from one recorded call site (see :mod:`.aten`).
"""

from .aten import AtenEntry, aten_catalogue, aten_failures, check_aten
from .base import Arg, Case, NotApplicable, OneOp, weighted_sum
from .check import UNROLLED, assert_zil_matches_bp, build, check_case
from .entries import Entry, catalogue
from .functions import FUNCTION_CASES
from .modules import MODULE_CASES, MODULE_SKIPS
from .probe import PATTERNS
from .skips import FUNCTION_SKIPS

__all__ = [
    "Arg",
    "AtenEntry",
    "Case",
    "Entry",
    "NotApplicable",
    "OneOp",
    "FUNCTION_CASES",
    "FUNCTION_SKIPS",
    "MODULE_CASES",
    "MODULE_SKIPS",
    "PATTERNS",
    "UNROLLED",
    "assert_zil_matches_bp",
    "aten_catalogue",
    "aten_failures",
    "build",
    "catalogue",
    "check_aten",
    "check_case",
    "weighted_sum",
]
