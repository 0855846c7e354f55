"""Input and target checks that run before any inference (clear errors, never silent numbers)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from .errors import InputError

_ELEMENTWISE = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)
_ELEMENTWISE_FN = {
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
}
_CLASSIFICATION = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASSIFICATION_FN = {F.cross_entropy, F.nll_loss}


def check_inputs(
    inputs: tuple, n_expected: int, device: torch.device | None, *, clamped: bool = True
) -> None:
    """Count, device, emptiness and finiteness of the inputs; with ``clamped`` (every PC rule)
    also refuse inputs that require grad."""
    if len(inputs) != n_expected:
        raise InputError(
            f"The model takes {n_expected} input(s), got {len(inputs)}; pass them positionally "
            f"before target=..."
        )
    for k, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            continue
        if device is not None and x.device != device:
            raise InputError(
                f"Input {k} is on {x.device} but the model's parameters are on {device}; move "
                f"the input with .to({str(device)!r}) (or the model with pcm.to(...))."
            )
        if clamped and x.requires_grad:
            raise InputError(
                f"Input {k} requires grad. PC clamps inputs to the data, so no gradient would "
                f"reach "
                f"it (BP's backward would fill its .grad). Pass it detached (x.detach()), or use "
                f"rule='bp' where you need input gradients."
            )
        if x.numel() == 0:
            raise InputError(
                f"Input {k} is empty (shape {tuple(x.shape)}); give a non-empty batch."
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise InputError(
                f"Input {k} contains NaN or Inf; PC inference on non-finite values gives "
                f"meaningless updates. Clean the batch first."
            )


def check_target(output: Any, target: Any, loss_fn: Any) -> None:
    """Shape/dtype checks for the common loss functions, run on the feed-forward output."""
    for t in tree_flatten(target)[0]:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError("The target contains NaN or Inf; clean it before learning.")
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    out_s, tgt_s = tuple(output.shape), tuple(target.shape)
    if output.dim() > 0 and target.dim() > 0 and out_s[0] != tgt_s[0]:
        raise InputError(
            f"Target batch size {tgt_s[0]} does not match the output's {out_s[0]} "
            f"(output {out_s}, target {tgt_s})."
        )
    if isinstance(loss_fn, _ELEMENTWISE) or loss_fn in _ELEMENTWISE_FN:
        if out_s != tgt_s:
            raise InputError(
                f"{_name(loss_fn)} needs a target shaped like the output {out_s}, got {tgt_s}; "
                f"broadcasting here would give silently wrong gradients."
            )
        if not target.is_floating_point():
            raise InputError(
                f"{_name(loss_fn)} needs a floating-point target, got {target.dtype}; convert it "
                f"with target.float() (or one-hot encode class indices)."
            )
    if isinstance(loss_fn, _CLASSIFICATION) or loss_fn in _CLASSIFICATION_FN:
        if target.is_floating_point():
            if tgt_s != out_s:
                raise InputError(
                    f"{_name(loss_fn)} with class probabilities needs a target shaped {out_s}, "
                    f"got {tgt_s}."
                )
        elif target.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
            raise InputError(
                f"{_name(loss_fn)} needs integer class indices (torch.long), got {target.dtype}."
            )
        elif tgt_s != out_s[:1] + out_s[2:]:
            raise InputError(
                f"{_name(loss_fn)} needs class indices shaped {out_s[:1] + out_s[2:]} for an "
                f"output {out_s}, got {tgt_s}."
            )


def _name(loss_fn: Any) -> str:
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def scalar_loss(loss: Any) -> torch.Tensor:
    """``loss`` as a 0-d tensor, or an InputError saying what ``loss_fn`` returned instead."""
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else ""
        raise InputError(
            f"loss_fn(output, target) must return a scalar float tensor, got "
            f"{type(loss).__name__}{shape}; reduce it (e.g. .mean() or .sum())."
        )
    return loss.reshape(())
