"""Weights files: a ``state_dict`` (or a checkpoint holding one) loaded into a model, safely.

Reads: a file written by ``torch.save``, with ``torch.load(weights_only=True)`` (nothing in the
file runs; a file that needs more is refused as unsafe). Writes: the model's parameters and
buffers (``load_state_dict(strict=True)``); nothing else.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelSpecError
from ..modelspec import few, short_line

__all__ = ["CHECKPOINT_KEYS", "load_weights"]

log = logging.getLogger(__name__)


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``state_dict`` file into ``model`` with ``weights_only=True`` and ``strict=True``.

    The file may hold the state_dict itself or a checkpoint dict that nests it under one of
    :data:`CHECKPOINT_KEYS` (``{"state_dict": ..., "epoch": ...}``, as Lightning and many
    training scripts save); the other entries are ignored.

    Raises:
        ModelSpecError: missing file, a file ``weights_only`` refuses as unsafe (it pickles Python
            objects that could run code), not a state_dict, or keys/shapes that do not fit the
            model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelSpecError(f"Weights file {path!r} does not exist; check the --weights path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module
        # x is blocked"; either way weights_only refused to import x.y: an unsafe file
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle of safe types at all: garbage or a foreign format
            raise ModelSpecError(
                f"Cannot read weights file {path!r}: it is not a file written by torch.save "
                f"(or it is damaged); give a file written by torch.save(model.state_dict(), path)."
            ) from exc
        raise ModelSpecError(
            f"Weights file {path!r} was refused by torch.load(weights_only=True) as unsafe: it "
            f"pickles {found.group(1)}, not just tensors (loading it could run arbitrary code); "
            f"nothing in it was run. Re-save only the weights with "
            f"torch.save(model.state_dict(), path) from a source you trust."
        ) from exc
    except Exception as exc:
        raise ModelSpecError(
            f"Cannot read weights file {path!r}: it is not a file written by torch.save, or it "
            f"is damaged ({type(exc).__name__}: {short_line(exc)}); give a file written by "
            f"torch.save(model.state_dict(), path)."
        ) from exc
    state = _unwrap_checkpoint(state, path)
    if not (
        isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ModelSpecError(
            f"Weights file {path!r} holds a {type(state).__name__}, not a state_dict of tensors "
            f"(nor a checkpoint with one under {'/'.join(CHECKPOINT_KEYS)}); save it with "
            f"torch.save(model.state_dict(), path)."
        )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {few(unexpected)}")
        if wrong:
            parts.append(f"mis-shaped {few(wrong)}")
        raise ModelSpecError(
            f"Weights file {path!r} does not fit the model: {'; '.join(parts)}; use the file "
            f"saved from this exact model (same MODEL and --num-classes)."
        )
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s", len(state), path)


def _unwrap_checkpoint(state: Any, path: str) -> Any:
    """The state_dict nested in a checkpoint dict, or ``state`` itself."""
    if not isinstance(state, Mapping) or all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    for key in CHECKPOINT_KEYS:
        inner = state.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            log.info("%s is a checkpoint: loading its %r entry", path, key)
            return inner
    return state
