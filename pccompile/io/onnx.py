"""ONNX export of a converted model: its prediction, or the PC network's energy.

Reads: a :class:`PCModule` (its eval-mode plan and current weights) and example inputs.
Writes: one ``.onnx`` file through ``torch.onnx.export(..., dynamo=True)`` (never the TorchScript
exporter), published atomically (see :func:`pccompile.io.atomic.atomic_output`) and only after
it passes ``onnx.checker.check_model`` and an onnxruntime run that matches PyTorch on fresh random
inputs (unless ``verify=False``).
Invariants: nothing appears under the requested path unless those checks pass (a mismatch or an
interrupted export leaves the old file, or none); the module's training flag is restored. onnx and
onnxruntime are optional (the ``onnx`` extra) and imported only when a file is checked.

Graphs (the batch dimension, dimension 0 of every input, is dynamic where the model allows it:
``torch.export.Dim.AUTO``; where the trace fixes it, or with ``dynamic_batch=False``, shapes are
the example inputs'; :attr:`OnnxExport.dynamic_batch` says which, and a dynamic file is checked
in onnxruntime on a batch of another size):

* ``predict``: ``inputs -> outputs``, the model's forward in eval mode.
* ``energy``: ``(inputs, target, value:<v> for every value node) -> (error:<v> for every error
  node, energy)``, i.e. :class:`pccompile.engine.energy.EnergyModule` on the eval-mode plan:
  evaluate a PC network's error nodes and total energy
  ``F = sum_v 1/2 ||eps_v||^2 + L(mu_out, target)`` at any state of its value nodes, in any ONNX
  runtime.
* ``learn``: ``(inputs, target, <parameter> for every trainable parameter, <buffer> for every
  buffer the step updates) -> (loss, grad.<parameter>..., new.<buffer>...)``: one Z-IL learning
  step (efficient schedule: local VJPs level by level), :mod:`pccompile.io.onnx_learn`.
* ``il-learn``: the same signature for IL: ``T`` inference steps unrolled, then the local weight
  gradients. Learn graphs have static shapes (the example's) and run in the module's current
  training mode (BatchNorm's running-statistic updates are the ``new.`` outputs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..engine.energy import EnergyModule, feedforward_values, value_node_names
from ..errors import CheckFailedError, PCCompileError
from ..extras import require
from ..module import PCModule
from .atomic import atomic_output

__all__ = [
    "ExportError",
    "OnnxMismatchError",
    "OnnxExport",
    "export_onnx",
    "require_onnx",
    "GraphKind",
]

log = logging.getLogger(__name__)

GraphKind = Literal["predict", "energy", "learn", "il-learn"]
GRAPHS: tuple[str, ...] = ("predict", "energy", "learn", "il-learn")
DEFAULT_TOL = 1e-4
# Above this many bytes of weights the file gets an external-data sidecar (ONNX's 2 GB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000
# Value nodes are checked at the feed-forward state plus this much noise, so errors are non-zero
# but the energy stays small enough for a float32 absolute comparison.
_VALUE_NOISE = 1e-2


class ExportError(PCCompileError):
    """The model cannot be exported to ONNX, or the written file does not load."""


class OnnxMismatchError(ExportError, CheckFailedError):
    """onnxruntime's results differ from PyTorch's by more than the tolerance."""


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        graph: ``"predict"``, ``"energy"``, ``"learn"`` or ``"il-learn"``.
        input_names / output_names: the ONNX graph's input and output names, in order.
        max_abs_diff: max |onnxruntime - PyTorch| over every output (None when not verified).
        tol: the tolerance it was checked against.
        dynamic_batch: the first input's batch dimension is symbolic in the file.
        nodes: the ONNX graph's node count (its top-level graph).
        phases: learn graphs: phase (``forward``, ``level_<t>``, ``step_<s>``, ``params``) ->
            number of ONNX nodes in it.
    """

    path: str
    graph: GraphKind
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float | None = None
    tol: float = DEFAULT_TOL
    per_output: dict[str, float] = field(default_factory=dict)
    dynamic_batch: bool = False
    nodes: int = 0
    phases: dict[str, int] = field(default_factory=dict)


def require_onnx(verify: bool = True, what: str = "ONNX export") -> None:
    """Fail fast when the ``onnx`` extra is missing: the exporter needs onnx and onnxscript,
    the check (``verify``) onnxruntime too.

    Raises:
        ConfigError: a package is missing; the message names ``pip install 'pccompile[onnx]'``.
    """
    modules = ("onnx", "onnxscript", "onnxruntime") if verify else ("onnx", "onnxscript")
    require("onnx", what, modules)


def export_onnx(
    pcm: PCModule,
    path: str | os.PathLike,
    example_inputs: tuple[torch.Tensor, ...],
    graph: GraphKind = "predict",
    *,
    target: torch.Tensor | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    verify: bool = True,
    tol: float = DEFAULT_TOL,
    overwrite: bool = False,
    seed: int = 0,
    dynamic_batch: bool = True,
    rule: Any = None,
) -> OnnxExport:
    """Export ``pcm``'s prediction, its PC energy or one learning step to ONNX, check it, then
    publish the file.

    Args:
        pcm: a converted model; predict and energy put it in eval mode (its training flag is
            restored after); learn graphs use its current mode.
        path: the ``.onnx`` file to write.
        example_inputs: inputs with the shapes to export (ONNX shapes are static).
        graph: ``"predict"``, ``"energy"``, ``"learn"`` (one Z-IL step) or ``"il-learn"`` (one
            IL step); see the module docstring and docs/export.md.
        target: an example target (energy and learn graphs); its shape and dtype are the
            exported ones.
        loss_fn: ``loss_fn(output, target) -> scalar`` (energy and learn graphs).
        verify: run ``onnx.checker.check_model`` and compare onnxruntime with PyTorch on fresh
            random inputs before publishing.
        tol: largest allowed max |onnxruntime - PyTorch|.
        overwrite: replace an existing ``path``.
        seed: seed of the verification inputs.
        dynamic_batch: try a dynamic batch dimension (kept only where the exporter finds the
            model allows it; the file is then checked on a batch of another size). Learn graphs
            are always static.
        rule: learn graphs: the rule, ``"zil"`` (default) or ``"fpa"`` for ``learn``, an
            :class:`~pccompile.IL` config for ``il-learn`` (default: ``pcm.rule`` if it is IL).
            Learn graphs use the module's current training mode (predict and energy: eval).

    Returns:
        An :class:`OnnxExport` with the names and the observed max abs difference.

    Raises:
        ConfigError: the ``onnx`` extra is not installed (checked before anything runs).
        ExportError: the exporter fails, or the file fails the ONNX checker; for learn graphs,
            a rule that is not exact (``learn``), random ops (dropout in train mode), or a step
            that cannot be traced.
        OnnxMismatchError: onnxruntime differs from PyTorch by more than ``tol`` (nothing is
            written under ``path``).
        OutputExistsError: ``path`` exists and ``overwrite`` is False.

    Example:
        >>> pcm = pccompile.convert(net, x)
        >>> res = export_onnx(pcm, "net.onnx", (x,))
        >>> res.max_abs_diff <= 1e-4
        True
    """
    if graph not in GRAPHS:
        raise ExportError(f"graph must be one of {GRAPHS}, got {graph!r}.")
    require_onnx(verify)
    if graph in ("learn", "il-learn"):
        from .onnx_learn import export_learn  # noqa: PLC0415 (imports this module)

        opts = dict(verify=verify, tol=tol, overwrite=overwrite, seed=seed)
        return export_learn(pcm, path, example_inputs, graph, target, loss_fn, rule, **opts)
    was_training = pcm.training
    pcm.eval()
    try:
        if graph == "predict":
            module, args, in_names, out_names = _predict(pcm, example_inputs)
        else:
            if target is None or loss_fn is None:
                raise ExportError("The energy graph needs target= and loss_fn=.")
            module, args, in_names, out_names = _energy(pcm, example_inputs, target, loss_fn)
        result = OnnxExport(os.fspath(path), graph, in_names, out_names, tol=tol)
        with atomic_output(path, overwrite=overwrite) as tmp:
            result.dynamic_batch = _write(module, args, in_names, out_names, tmp, dynamic_batch)
            if verify:
                batch = _other_batch(example_inputs) if result.dynamic_batch else None
                fresh = _fresh_args(
                    pcm, graph, args, len(example_inputs), target, loss_fn, seed, batch
                )
                result.per_output = _check(module, tmp, fresh, in_names)
                result.max_abs_diff = max(result.per_output.values(), default=0.0)
                _require_match(result, path)
        return result
    finally:
        pcm.train(was_training)


def _require_match(result: OnnxExport, path: str | os.PathLike) -> None:
    if not result.max_abs_diff <= result.tol:
        worst = max(result.per_output, key=result.per_output.get)
        raise OnnxMismatchError(
            f"onnxruntime differs from PyTorch by {result.max_abs_diff:.3e} > {result.tol:g} "
            f"(worst output {worst!r}); nothing was written to {os.fspath(path)!r}. "
            f"Raise --tol if the outputs are large, or pass --no-verify to write "
            f"the file anyway."
        )


# ------------------------------------------------------------------------------------- graphs
def _input_names(pcm: PCModule, n: int) -> list[str]:
    names = [nd.name for nd in pcm.plan.gm.graph.nodes if nd.op == "placeholder"][:n]
    return names + [f"input_{k}" for k in range(len(names), n)]


def _predict(pcm: PCModule, inputs: tuple) -> tuple[nn.Module, tuple, list[str], list[str]]:
    with torch.no_grad():
        out = pcm(*inputs)
    leaves, _ = tree_flatten(out)
    outs = ["output"] if len(leaves) == 1 else [f"output.{k}" for k in range(len(leaves))]
    return pcm, tuple(inputs), _input_names(pcm, len(inputs)), outs


def _energy(
    pcm: PCModule, inputs: tuple, target: torch.Tensor, loss_fn: Callable
) -> tuple[nn.Module, tuple, list[str], list[str]]:
    plan = pcm.plan
    if not isinstance(target, torch.Tensor):
        raise ExportError(
            f"The energy graph takes one target tensor, got a {type(target).__name__}; export "
            f"models with a single tensor output."
        )
    names = value_node_names(plan)
    values = feedforward_values(plan, tuple(inputs), target, loss_fn)
    data = _input_names(pcm, len(inputs))
    tname = "target" if "target" not in data else "target_"
    module = EnergyModule(plan, loss_fn, n_inputs=len(inputs)).eval()
    in_names = data + [tname] + [f"value:{v}" for v in names]
    out_names = [f"error:{v}" for v in names] + ["energy"]
    return module, (*inputs, target, *values), in_names, out_names


def _fresh_args(
    pcm: PCModule,
    graph: GraphKind,
    args: tuple,
    n_inputs: int,
    target: Any,
    loss_fn: Callable | None,
    seed: int,
    batch: int | None = None,
) -> tuple:
    """New random data (same shapes and dtypes, or batch size ``batch``); for the energy graph,
    a random target and value nodes near the feed-forward state of that data, so every error
    node is non-zero."""
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = tuple(_like(x, gen, batch) for x in args[:n_inputs])
    if graph == "predict":
        return inputs
    tgt = _like(target, gen, batch)
    values = feedforward_values(pcm.plan, inputs, tgt, loss_fn)
    noisy = [
        v + _VALUE_NOISE * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        if v.is_floating_point()
        else v
        for v in values
    ]
    return (*inputs, tgt, *noisy)


def _other_batch(inputs: tuple) -> int | None:
    """A batch size unlike the example's, to check a dynamic batch dimension."""
    first = next((x for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0), None)
    return None if first is None else first.shape[0] + 1


def _like(x: torch.Tensor, gen: torch.Generator, batch: int | None = None) -> torch.Tensor:
    shape = x.shape if batch is None or x.dim() == 0 else (batch, *x.shape[1:])
    if x.is_floating_point():
        return torch.randn(shape, generator=gen, dtype=x.dtype)
    if x.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    hi = int(x.max().item()) + 1 if x.numel() else 1  # class indices: stay within the seen range
    return torch.randint(0, max(hi, 1), shape, generator=gen, dtype=x.dtype)


# ------------------------------------------------------------------------------------- writing
def _write(
    module: nn.Module,
    args: tuple,
    in_names: list[str],
    out_names: list[str],
    dest: Path,
    dynamic_batch: bool = True,
) -> bool:
    """Export and save; returns whether the batch dimension is dynamic in the file."""
    program = None
    if dynamic_batch:
        # dimension 0 of every input: AUTO keeps it symbolic where the graph allows and lets
        # the exporter specialise it (no error) where the trace fixed it
        auto = {0: torch.export.Dim.AUTO}
        spec = (tuple(auto if isinstance(a, torch.Tensor) and a.dim() else None for a in args),)
        try:
            program = _export(module, args, in_names, out_names, dynamic_shapes=spec)
        except ExportError as exc:
            log.info("no dynamic batch dimension (%s); exporting with static shapes", exc)
    if program is None:
        program = _export(module, args, in_names, out_names)
    size = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    program.save(dest, external_data=size > _EXTERNAL_DATA_BYTES)
    inputs = list(program.model.graph.inputs)
    return bool(inputs) and len(inputs[0].shape) > 0 and not isinstance(inputs[0].shape[0], int)


def _export(
    module: nn.Module, args: tuple, in_names: list[str], out_names: list[str], **kwargs: Any
) -> Any:
    try:
        program = torch.onnx.export(
            module,
            args,
            None,
            dynamo=True,
            input_names=in_names,
            output_names=out_names,
            verbose=False,
            **kwargs,
        )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:400]}; the model uses something the ONNX exporter "
            f"cannot translate (rerun with --debug for the exporter's report)."
        ) from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program; upgrade torch (>= 2.5).")
    return program


def _check(module: nn.Module, path: Path, args: tuple, in_names: list[str]) -> dict[str, float]:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(
            f"The exported file fails onnx.checker.check_model: {' '.join(str(exc).split())}; "
            f"please report this (it is an exporter bug); --no-verify writes it anyway."
        ) from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no onnxruntime chatter on stderr
    given = dict(zip(in_names, args, strict=True))
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: given[i.name].detach().cpu().numpy() for i in session.get_inputs()}
        got = session.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(
            f"onnxruntime cannot run the exported graph ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); the file passed onnx.checker. Use --dtype "
            f"float32 (onnxruntime's CPU kernels are incomplete for float64), or --no-verify to "
            f"write it anyway."
        ) from exc
    with torch.no_grad():
        ref, _ = tree_flatten(module(*args))
    names = [o.name for o in session.get_outputs()]
    if len(got) != len(ref):
        raise ExportError(
            f"onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}; please report this."
        )
    return {
        n: float(
            np.abs(np.asarray(g, dtype=np.float64) - r.detach().double().cpu().numpy()).max(
                initial=0.0
            )
        )
        for n, g, r in zip(names, got, ref, strict=True)
    }
