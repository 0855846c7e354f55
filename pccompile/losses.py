"""The default loss policy: a target and a loss for a model's output when the user gives none.

Reads: a model's output (a tensor, or a tuple/dict/... of them) and a seed.
Writes nothing. Used by ``pccompile verify`` and the ONNX energy export on random data.
Invariants: the target depends only on the output's structure, shapes, dtypes and the seed (its
own ``torch.Generator``; the global RNG is not touched); the loss returns a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["default_loss"]


def default_loss(output: Any, seed: int = 0) -> tuple[Any, Callable, str]:
    """The target and loss ``verify`` and the energy export use on random data.

    A 2-D floating output is read as class logits: random class indices and cross-entropy.
    Any other tensor: a standard-normal target of the same shape and MSE. Several outputs: a
    target per floating output and the sum of their MSEs.

    Returns:
        ``(target, loss_fn, description)``.

    Example:
        >>> target, loss_fn, text = default_loss(torch.zeros(4, 10))
        >>> text
        'cross-entropy against random class indices'
    """
    gen = torch.Generator().manual_seed(seed + 2)
    if isinstance(output, torch.Tensor):
        if output.dim() == 2 and output.is_floating_point():
            n, c = output.shape
            target = torch.randint(0, c, (n,), generator=gen)
            return target, F.cross_entropy, "cross-entropy against random class indices"
        return _randn_like(output, gen), F.mse_loss, "MSE against a random normal target"
    target = tree_map(lambda t: _randn_like(t, gen) if _is_float(t) else t, output)
    return target, _tree_mse, "sum of MSEs against random normal targets, one per output"


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _randn_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(t.shape, generator=gen, dtype=t.dtype)


def _tree_mse(output: Any, target: Any) -> torch.Tensor:
    outs, _ = tree_flatten(output)
    tgts, _ = tree_flatten(target)
    terms = [F.mse_loss(o, t) for o, t in zip(outs, tgts, strict=True) if _is_float(o)]
    return torch.stack(terms).sum()
