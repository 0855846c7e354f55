"""``pccompile train``: parse the options into a :class:`pccompile.train.TrainConfig`, load the
data and the model, and run :func:`pccompile.train.fit`; print one line per epoch.

Reads: ``--data`` (:func:`pccompile.data.load_dataset`), MODEL through
:mod:`pccompile.modelspec`, ``--weights``, OUT/checkpoint.pt on ``--resume``.
Writes: what :func:`pccompile.train.fit` writes in OUT; a line per epoch on stdout (none with
``-q``; one JSON object at the end with ``--json``), a per-epoch progress bar on stderr (a
terminal only, with tqdm).
Invariants: OUT is checked before the data or the model is loaded; bad input raises before
anything is written; Ctrl-C exits 130 leaving the last complete checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

import torch

from ..data import Dataset, load_dataset
from ..distributed import init_from_env, is_main, rank, world_size
from ..errors import CheckFailedError, PCCompileError
from ..io.weights import load_weights
from ..modelspec import build_model, parse_spec
from ..train import ResidualCNN, TrainConfig, batch_norms, check_train_outdir, fit
from .base import parse_rule_options
from .common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, emit

__all__ = ["cmd_train", "config_from_args"]


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    opts = {k: getattr(args, k) for k in ("gamma", "steps", "mode") if getattr(args, k) is not None}
    opts.update(parse_rule_options(args.rule_option))
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)
    return TrainConfig(
        rule=args.rule,
        rule_options=opts,
        granularity=args.granularity,
        trace=args.trace,
        optimizer=args.optimizer,
        lr=lr,
        lr_schedule=args.lr_schedule,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        compare_bp=args.compare == "bp",
        limit_batches=args.limit_batches,
        device=_device(args.device),
        dtype=args.dtype,
    )


def _device(name: str) -> str:
    """Under torchrun, ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    import os

    if name == "cuda" and world_size() > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return name


def _model(args: argparse.Namespace, data: Dataset) -> torch.nn.Module:
    torch.manual_seed(args.seed)  # reproducible init
    if args.model is None:
        return ResidualCNN(data.x_train.shape[1], data.num_classes)
    spec = parse_spec(args.model)
    n = args.num_classes
    if n is None and spec.kind == "torchvision":
        n = data.num_classes
    model = build_model(spec, n).model
    if args.weights:
        load_weights(model, args.weights)
    return model  # its own dtype unless --dtype (the trainer casts, and the images follow)


class _Bar:
    """A tqdm bar over one epoch's batches, on stderr, when it is a terminal (and tqdm exists)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.epoch = quiet, None, 0

    def __call__(self, i: int, n: int, loss: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.quiet = True
                return
            self.epoch += 1
            self.bar = tqdm(
                total=n, desc=f"epoch {self.epoch}", file=sys.stderr, leave=False, disable=None
            )
        self.bar.update(1)
        self.bar.set_postfix_str(f"loss {loss:.3f}")
        if i == n:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _line(row: dict[str, Any], epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}: {row['rule']} train_loss {row['train_loss']:.4f} "
        f"test_acc {row['test_acc']:.4f} ({row['seconds']:.2f}s)"
    )
    if "bp_test_acc" in row:
        text += (
            f" | bp train_loss {row['bp_train_loss']:.4f} test_acc {row['bp_test_acc']:.4f} "
            f"({row['bp_seconds']:.2f}s) | max |theta - theta_bp| {row['max_param_diff']:.2e}"
        )
    return text


def cmd_train(args: argparse.Namespace) -> int:
    """``pccompile train``: train MODEL on --data with --rule into OUT (data-parallel over the
    ranks when started by ``torchrun``; rank 0 prints and writes)."""
    joined = init_from_env(device=getattr(args, "device", "cpu"))
    try:
        if world_size() == 1:
            return _train(args)
        if not is_main():
            args.quiet, args.json = True, False
        try:
            return _train(args)
        except (PCCompileError, OSError) as exc:
            raise SystemExit(_report_once(args, exc)) from None
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


_REPORTED = "pccompile-train/error-reported"


def _report_once(args: argparse.Namespace, exc: BaseException) -> int:
    """Bad input fails alike on every rank: rank 0 alone prints it, and the other ranks wait
    until it has (torchrun stops the others when one exits); returns the exit code.
    Internal errors, which may be one rank's own, are printed by every rank that hits one."""
    from . import _fail, _message

    code = EXIT_FAIL if isinstance(exc, CheckFailedError) else EXIT_USAGE
    store = _store()
    if is_main():
        _fail(args, _message(exc), code)
        sys.stderr.flush()
        if store is not None:
            store.set(_REPORTED, "1")
    elif store is not None:
        try:
            store.wait([_REPORTED], datetime.timedelta(seconds=30))
        except Exception:  # rank 0 did not fail here: say it ourselves
            _fail(args, f"rank {rank()}: {_message(exc)}", code)
    return code


def _store() -> Any:
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # no default store (a custom init): every rank prints
        return None


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # bad options: ConfigError, exit 2, before anything
    check_train_outdir(args.output, force=args.force, resume=args.resume)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=args.seed)
    model = _model(args, data)
    meta = {"model": args.model or "ResidualCNN", "data": data.name, "weights": args.weights}
    if world_size() > 1:
        emit(args, f"data-parallel over {world_size()} ranks (torch.distributed)")
        if bns := batch_norms(model):
            emit(args, f"{len(bns)} BatchNorm layer(s) use the global batch's statistics")
    bar = _Bar(args.quiet or args.json)

    def warn(text: str) -> None:
        print(f"pccompile train: warning: {text}", file=sys.stderr)

    try:
        trainer = fit(
            model,
            data,
            config,
            args.output,
            resume=args.resume,
            force=args.force,
            meta=meta,
            on_epoch=lambda row: emit(args, _line(row, config.epochs)),
            on_batch=bar,
            warn=warn,
        )
    except KeyboardInterrupt:
        bar.close()
        print(
            f"pccompile train: interrupted; {args.output} keeps the last complete epoch's "
            f"checkpoint (continue with --resume).",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    args.exit_code = EXIT_OK
    last = trainer.metrics[-1] if trainer.metrics else {}
    if args.json:
        print(json.dumps({"command": "train", "ok": True, "outdir": str(args.output), **last}))
    else:
        traces = ", trace_epoch<k>.png" if config.trace else ""
        emit(
            args, f"wrote {args.output} (checkpoint.pt, metrics.json, model.pt, curves.png{traces})"
        )
    return EXIT_OK
