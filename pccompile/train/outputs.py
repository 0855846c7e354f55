"""Running a :class:`~pccompile.train.Trainer` into an output directory.

Reads: OUT/checkpoint.pt on ``resume`` (``torch.load(weights_only=True)``).
Writes, in OUT, each file atomically (whole or not at all): ``checkpoint.pt`` after every epoch
(first, so Ctrl-C leaves the last complete one), ``metrics.json`` (one dict per epoch) and
``model.pt`` (the model's ``state_dict``) after every epoch, ``curves.png`` at the end (skipped,
with a warning, without matplotlib).
Invariants: :func:`check_train_outdir` is called before any work: OUT must be new, or replaceable
with ``force`` (only when it holds nothing but these files), or hold a checkpoint on ``resume``.
A resume refuses a checkpoint whose configuration (all but ``epochs``) or ``meta`` differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data import Dataset
from ..distributed import is_main
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_output, check_output
from .curves import plot_curves
from .trainer import TrainConfig, Trainer

__all__ = ["TRAIN_FILES", "check_train_outdir", "load_checkpoint", "fit"]

CHECKPOINT, METRICS, MODEL, CURVES = "checkpoint.pt", "metrics.json", "model.pt", "curves.png"
TRAIN_FILES = (CHECKPOINT, METRICS, MODEL, CURVES)
TRACE_GLOB = "trace_epoch*.png"  # TrainConfig.trace: trace_epoch1.png, trace_epoch2.png ...


def check_train_outdir(
    out: str | os.PathLike, *, force: bool = False, resume: bool = False
) -> None:
    """Check before any work that a run may write OUT (see the module docstring).

    Raises:
        OutputExistsError: OUT exists (without ``force``/``resume``) or holds foreign files.
        InputError: ``resume`` and OUT has no checkpoint.
        OSError: OUT's folder cannot be written.
    """
    out = Path(out)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise InputError(
                f"--resume: {str(out / CHECKPOINT)!r} does not exist; start the run without "
                f"--resume first."
            )
        check_output(out / METRICS, overwrite=True)  # writable
        return
    check_output(out, overwrite=force, directory=True, replaceable=_ours)


def _ours(out: Path) -> tuple[str, ...]:
    """What a run writes in OUT: the fixed files and the ``--trace`` pictures."""
    return TRAIN_FILES + tuple(p.name for p in out.glob(TRACE_GLOB))


def load_checkpoint(out: str | os.PathLike) -> dict[str, Any]:
    """OUT's checkpoint (a file or OUT itself).

    Raises:
        InputError: missing, unreadable, or not a pccompile training checkpoint.
    """
    path = Path(out)
    path = path / CHECKPOINT if path.is_dir() else path
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise InputError(f"{str(path)!r} does not exist; nothing to resume.") from None
    except Exception as exc:
        raise InputError(f"{str(path)!r} is not a readable checkpoint ({exc}).") from None
    if not isinstance(state, dict) or state.get("format") != "pccompile-train":
        raise InputError(f"{str(path)!r} is not a pccompile training checkpoint.")
    return state


def _check_resumable(state: dict, config: TrainConfig, meta: dict) -> None:
    saved = dict(state["config"])
    now = config.as_dict()
    default = {f.name: f.default for f in dataclasses.fields(config)}  # older checkpoints
    differ = [
        f"{k} {saved.get(k, default[k])!r} -> {now[k]!r}"
        for k in now
        if k not in ("epochs", "device") and saved.get(k, default[k]) != now[k]
    ]
    saved_meta = state.get("meta", {})
    differ += [
        f"{k} {saved_meta.get(k)!r} -> {v!r}" for k, v in meta.items() if saved_meta.get(k) != v
    ]
    if differ:
        raise ConfigError(
            f"--resume with other settings than the checkpoint's ({'; '.join(differ)}); repeat "
            f"the original command's options (only --epochs may change)."
        )


def _draw_trace(trainer: Trainer, path: Path, warn: Callable[[str], None] | None) -> None:
    from ..plot import plot_trace

    title = f"{trainer.config.rule}, epoch {trainer.epoch}: inference on its last batch"
    try:
        plot_trace(trainer.last_trace, path, title=title)
    except ConfigError as exc:  # matplotlib is an extra
        if warn is not None:
            warn(f"{path.name} skipped: {exc}")


def _write_json(path: Path, obj: Any) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def _save(path: Path, obj: Any) -> None:
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(obj, tmp)


def fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    force: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_batch: Callable[[int, int, float], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Trainer:
    """Train ``model`` (in place) on ``data`` into OUT; return the finished :class:`Trainer`.

    Args:
        model: the model, initialised (seed the global RNG before building it).
        data: the data set. config: how to train.
        out: the output directory. resume: continue from OUT's checkpoint. force: replace an
            OUT that an earlier run wrote.
        meta: what else must match on resume (model spec, data), stored in the checkpoint.
        on_epoch: called with each epoch's metrics row. on_batch: ``(i, n, loss)`` per batch.
        warn: called with one line when something optional is skipped (curves without
            matplotlib).

    Example:
        >>> from pccompile.data import load_dataset
        >>> torch.manual_seed(0)
        >>> data = load_dataset("digits")
        >>> fit(ResidualCNN(), data, TrainConfig(epochs=2, rule="zil"), "runs/zil")
    """
    out = Path(out)
    meta = dict(meta or {})
    check_train_outdir(out, force=force, resume=resume)
    state = load_checkpoint(out) if resume else None
    if state is not None:
        _check_resumable(state, config, meta)
    trainer = Trainer(model, data, config)  # with several ranks: a barrier (a broadcast)
    main = is_main()  # only rank 0 writes
    if state is not None:
        trainer.load_state_dict(state)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        for name in _ours(out):  # --force: what an earlier run left
            (out / name).unlink(missing_ok=True)
    while not trainer.done:
        row = trainer.run_epoch(on_batch)
        if not main:
            continue
        _save(out / CHECKPOINT, {**trainer.state_dict(), "meta": meta})
        _write_json(out / METRICS, trainer.metrics)
        _save(out / MODEL, trainer.model.state_dict())
        if config.trace and trainer.last_trace is not None:
            _draw_trace(trainer, out / f"trace_epoch{trainer.epoch}.png", warn)
        if on_epoch is not None:
            on_epoch(row)
    if not main:
        return trainer
    if not (out / MODEL).exists():  # resumed a finished run
        _save(out / MODEL, trainer.model.state_dict())
        _write_json(out / METRICS, trainer.metrics)
    try:
        plot_curves(trainer.metrics, out / CURVES)
    except ConfigError as exc:
        if warn is not None:
            warn(f"{CURVES} skipped: {exc}")
    return trainer
