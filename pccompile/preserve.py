"""Running the user's model on the side without changing it.

Conversion runs the model (or a graph sharing its submodules) to trace it, to type its values
and to compare the trace with eager execution. None of that may be visible afterwards: a
running statistic bumped, a cache filled under ``no_grad`` (so the user's next BP step gets no
gradient through it), a random number drawn. :func:`preserved` is the one place that saves and
restores that state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

__all__ = ["preserved", "cuda_devices", "python_state", "root_hooks_off"]


def cuda_devices(*values: Any) -> list[int]:
    """Indices of the CUDA devices holding any tensor in ``values`` (for RNG forking)."""
    leaves = tree_flatten(values)[0]
    return sorted(
        {t.device.index or 0 for t in leaves if isinstance(t, torch.Tensor) and t.is_cuda}
    )


def python_state(model: nn.Module, *, containers: bool = False) -> dict[str, Any]:
    """Plain Python state of every submodule, by qualified name: int/float/bool/str/None
    attributes (counters a forward may bump) and, with ``containers``, the sizes of public
    dict/list/set/tuple attributes (caches a forward may fill)."""
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            key = f"{name}.{k}".lstrip(".")
            if type(v) in (int, float, bool, str, type(None)) and k != "training":
                out[key] = v
            elif containers and isinstance(v, (dict, list, set, tuple)) and not k.startswith("_"):
                out[key] = len(v)
    return out


@contextlib.contextmanager
def root_hooks_off(model: nn.Module) -> Iterator[None]:
    """Run ``model(...)`` inside the block without the forward (pre-)hooks on ``model`` itself.

    A captured graph is the root's ``forward``; the root's hooks run around it
    (:class:`pccompile.PCModule` applies them in ``forward`` and ``learn``), so they must not
    be traced into it (torch.export calls the module) nor be part of what it is checked
    against. Hooks on submodules stay."""
    d = model.__dict__
    names = [k for k in d if k.startswith("_forward_") and "hooks" in k]
    saved = {k: d[k] for k in names}
    for k, v in saved.items():
        d[k] = type(v)()
    try:
        yield
    finally:
        d.update(saved)


def _containers(value: Any) -> Any:
    """A shallow copy of a mutable container attribute (a cache dict, a list of states)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, set)):
        return type(value)(value)
    return None


@contextlib.contextmanager
def preserved(model: nn.Module, *values: Any, training: bool | None = None) -> Iterator[None]:
    """Run a block against ``model`` and leave it exactly as it was.

    Restored on exit: every submodule's training flag and plain attributes (rebinding and
    the contents of dict/list/set attributes such as caches), the values of all buffers and
    their registration, and the global (and CUDA, for devices holding ``values``) RNG state.

    Args:
        model: the module whose state must survive.
        values: tensors whose devices decide which CUDA RNGs to fork.
        training: set this training mode for the block (restored afterwards).
    """
    saved = []
    for m in model.modules():
        attrs = dict(vars(m))
        contents = {k: c for k, v in attrs.items() if (c := _containers(v)) is not None}
        saved.append((m, attrs, contents))
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=cuda_devices(*values)):
            if training is not None:  # flags only: a train() override may rebuild things
                for m in model.modules():
                    m.training = training
            yield
    finally:
        for m, attrs, contents in saved:
            for k in [k for k in vars(m) if k not in attrs]:
                del m.__dict__[k]
            for k, v in attrs.items():
                c = contents.get(k)
                if c is not None:  # the same container object, with its old contents
                    v.clear()
                    v.extend(c) if isinstance(v, list) else v.update(c)
                m.__dict__[k] = v
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)
