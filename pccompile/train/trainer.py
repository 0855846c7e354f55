"""The training loop: one PC-rule run (and optionally a BP copy beside it) over a data set.

Reads: a model (trained in place: the PC module's parameters *are* the model's), a
:class:`pccompile.data.Dataset` and a :class:`TrainConfig`.
Writes: nothing on disk (:mod:`pccompile.train.outputs` does); :meth:`Trainer.state_dict` is the
checkpoint.
Invariants: the run depends only on the config, the model's initial state and the global RNG
state at construction: the data order comes from a ``torch.Generator`` seeded with
``config.seed``, and a checkpoint taken after epoch k restores model, optimizer, generator and the
global RNG, so k epochs then a resume give the parameters of an uninterrupted run, bitwise. Under
``compare_bp`` the BP copy starts from the same weights and RNG state at every step, and the PC
run's RNG stream is the one it would have without the comparison.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..api import convert
from ..data import Dataset
from ..distributed import LEAF_MODULES, DataParallel, all_mean, global_layers, world_size
from ..errors import ConfigError, InputError
from ..frontend.layers import check_granularity
from ..frontend.names import no_vertex_message
from ..module import PCModule
from ..rules import make_rule

__all__ = ["TrainConfig", "Trainer", "check_fits", "batch_norms", "model_dtype"]

OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
EVAL_CHUNK = 1024


@dataclass
class TrainConfig:
    """How to train.

    Attributes:
        rule: the PC rule (``zil``, ``fpa``, ``il``, ``ipc``, or ``bp`` for plain autograd);
            ``rule_options`` its options (any field of its config: ``gamma``, ``steps``,
            ``mode``, ``output``, ``output_precision``, ``precision``, iPC's ``lr`` ...).
        granularity: the vertex granularity to convert with (``op``, ``layer``; None: the
            rule's default).
        trace: record the inference of each epoch's last batch (``learn(trace=True)``);
            :func:`pccompile.train.fit` draws it as ``trace_epoch<k>.png``.
        optimizer: ``sgd`` or ``adam``; ``lr``, ``momentum`` (SGD), ``weight_decay``.
        lr_schedule: ``constant``, or ``cosine``: the learning rate at step ``s`` of ``S``
            (all epochs' batches) is ``lr * (1 + cos(pi s / S)) / 2``, a function of the step
            alone, so a resume continues it (a resume to more epochs stretches it).
        epochs: epochs to train in all (a resume continues up to it).
        batch_size: samples per optimizer step; the last partial batch of an epoch is dropped.
        seed: seeds the data order (the model's init is the caller's, seeded likewise).
        compare_bp: also train a BP copy from the same initial weights on the same batches.
        limit_batches: train on at most this many batches per epoch (quick runs, tests).
        device: where the model and each batch live (``cpu``, ``cuda``, ``cuda:1``); the data
            set stays in host memory and the data order is drawn on the CPU.
        dtype: ``float32``, ``float64`` or ``bfloat16``: the model is cast to it and each batch's
            images too; ``None`` keeps the model's own floating dtype (the images follow it).
    """

    rule: str = "zil"
    rule_options: dict[str, Any] = field(default_factory=dict)
    granularity: str | None = None
    trace: bool = False
    optimizer: str = "sgd"
    lr: float = 0.05
    lr_schedule: str = "constant"
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 64
    seed: int = 0
    compare_bp: bool = False
    limit_batches: int | None = None
    device: str = "cpu"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: choose one of {list(DTYPES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: choose one of {list(OPTIMIZERS)}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"lr_schedule {self.lr_schedule!r}: choose one of {list(LR_SCHEDULES)}."
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.limit_batches is not None and self.limit_batches < 1:
            raise ConfigError(f"limit_batches must be at least 1, got {self.limit_batches}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}.")
        make_rule(self.rule, **self.rule_options)  # unknown rule or option: ConfigError now
        if self.granularity is not None:
            check_granularity(self.granularity)
        if self.trace and self.rule == "bp":
            raise ConfigError("trace: rule 'bp' runs no inference to trace; use a PC rule.")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"device {self.device!r} is not a torch device (cpu, cuda, cuda:1)."
            ) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r}: CUDA is not available here; use cpu.")
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"device {self.device!r}: there are {torch.cuda.device_count()} CUDA devices."
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_fits(
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> None:
    """Run ``model`` on a first batch (no grad, RNG and mode restored) and check that its output
    is a ``(batch, K)`` tensor of logits with ``K >= num_classes``, so cross-entropy fits.

    Raises:
        InputError: the model rejects the images, or its output does not fit the labels.
    """
    x = _images(data.x_train[: min(batch_size, len(data.x_train))], device, dtype)
    rng, training = get_rng(device), model.training
    try:
        with torch.no_grad():
            model.eval()
            out = model(x)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(
            f"The model rejects {data.name}'s images of shape {tuple(x.shape)}: "
            f"{type(exc).__name__}: {msg}; give a model made for them."
        ) from None
    finally:
        model.train(training)
        set_rng(rng, device)
    k = data.num_classes
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"The model's output {what} is not (batch, classes) logits for {k} classes; give a "
            f"model whose output is (N, {k})."
        )
    if out.shape[1] < k:
        raise InputError(
            f"The model outputs {out.shape[1]} classes but {data.name} has {k}; give a model "
            f"with {k} outputs (e.g. --num-classes {k})."
        )


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none):
    the dtype its inputs must have."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _images(x: torch.Tensor, device: Any, dtype: torch.dtype | None) -> torch.Tensor:
    return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)


def batch_norms(model: nn.Module) -> list[str]:
    """The ``nn.BatchNorm1d/2d/3d`` submodules of ``model``: data-parallel, the trainer makes
    them use the global batch's statistics (:func:`pccompile.distributed.global_layers`)."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [n for n, m in model.named_modules() if type(m) in kinds]


def _optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``steps`` in all."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * step / max(steps, 1))) / 2
    return cfg.lr


def get_rng(device: str | torch.device = "cpu") -> tuple:
    """The global RNG states a step may draw from: the CPU's, and ``device``'s if it is CUDA."""
    dev = torch.device(device)
    return (torch.get_rng_state(), torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None)


def set_rng(state: tuple, device: str | torch.device = "cpu") -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], torch.device(device))


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Test loss and accuracy of ``model`` in eval mode (its mode is restored)."""
    training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), EVAL_CHUNK):
            out = model(_images(x[i : i + EVAL_CHUNK], device, dtype))
            yb = y[i : i + EVAL_CHUNK].to(device)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    model.train(training)
    n = max(len(y), 1)
    return loss / n, correct / n


def _check_vertex_keys(pcm: PCModule, rule: Any) -> None:
    """The vertex names in the rule's ``precision``/``energies`` are vertices of ``pcm``."""
    names = [v.name for v in pcm.plan.vertices if v.kind != "output"]
    for what in ("precision", "energies"):
        for key in getattr(rule, what, None) or {}:
            if key not in names:
                raise ConfigError(no_vertex_message(what, key, names))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    """The largest absolute difference between two models' parameters."""
    return max(
        (
            float((p.detach() - q.detach()).abs().max())
            for p, q in zip(a.parameters(), b.parameters())
            if p.numel()
        ),
        default=0.0,
    )


class Trainer:
    """One training run of ``model`` on ``data`` with ``config``.

    Converting happens here (on the first training batch's shape); ``model`` is trained in place.
    Call :meth:`run_epoch` until :attr:`done`; :meth:`state_dict` / :meth:`load_state_dict`
    checkpoint and resume it.
    """

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig):
        if len(data.y_train) < config.batch_size:
            raise InputError(
                f"{data.name} has {len(data.y_train)} training samples, fewer than one batch of "
                f"{config.batch_size}; lower --batch-size."
            )
        if config.batch_size % world_size():
            raise ConfigError(
                f"batch size {config.batch_size} does not split over {world_size()} ranks; "
                f"give a multiple of {world_size()} (the global batch is split across ranks)."
            )
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype) if config.dtype else model_dtype(model)
        if config.dtype:
            model.to(self.device, self.dtype)
        else:  # the model's own dtypes, untouched
            model.to(self.device)
        check_fits(model, data, config.batch_size, self.device, self.dtype)
        leaves: tuple = ()
        if world_size() > 1:  # BatchNorm statistics and dropout masks of the global batch
            model = global_layers(model, self.device)
            # only the kinds present: leaf_modules rules out torch.export's fallback
            present = {type(m) for m in model.modules()}
            leaves = tuple(t for t in LEAF_MODULES if t in present)
        model.train()
        self.bp_model = copy.deepcopy(model) if config.compare_bp else None
        rule = make_rule(config.rule, **config.rule_options)
        self.model, self.data, self.config = model, data, config
        example = _images(
            data.x_train[: config.batch_size // world_size()], self.device, self.dtype
        )
        self.pcm: PCModule = convert(
            model, example, rule, leaf_modules=leaves, granularity=config.granularity
        )
        _check_vertex_keys(self.pcm, rule)  # a typo in precision= fails before any file
        self.dp = DataParallel(self.pcm)  # one process: does nothing
        self.bp_dp = DataParallel(self.bp_model) if self.bp_model is not None else None
        self.opt = _optimizer(model.parameters(), config)
        self.bp_opt = _optimizer(self.bp_model.parameters(), config) if self.bp_model else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []
        self.last_trace = None  # config.trace: the Trace of the last epoch's last batch

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def batches_per_epoch(self) -> int:
        n = len(self.data.y_train) // self.config.batch_size
        return min(n, self.config.limit_batches) if self.config.limit_batches else n

    def run_epoch(self, on_batch: Callable[[int, int, float], None] | None = None) -> dict:
        """Train one epoch, evaluate on the test split, append and return its metrics row.

        ``on_batch(i, n, loss)`` is called after each batch (a progress bar)."""
        cfg, data = self.config, self.data
        perm = torch.randperm(len(data.y_train), generator=self.generator)
        n = self.batches_per_epoch()
        losses, bp_losses, seconds, bp_seconds = [], [], 0.0, 0.0
        energy_start, energy_end = [], []
        for i in range(n):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = _images(self.dp.shard(data.x_train[idx]), self.device, self.dtype)
            y = self.dp.shard(data.y_train[idx]).to(self.device)
            rng = get_rng(self.device)
            lr = lr_at(cfg, (self.epoch * n) + i, cfg.epochs * n)
            for opt in (self.opt, self.bp_opt):
                for group in opt.param_groups if opt is not None else ():
                    group["lr"] = lr
            t0 = time.perf_counter()
            self.opt.zero_grad()
            traced = {"trace": True} if cfg.trace and i == n - 1 else {}
            report = self.dp.learn(x, target=y, loss_fn=F.cross_entropy, **traced)  # + all-reduce
            self.opt.step()
            seconds += time.perf_counter() - t0
            losses.append(all_mean(float(report.loss), device=self.device))
            if report.energy:  # the rules and modes that track it (il, ipc; faithful zil/fpa)
                energy_start.append(all_mean(report.energy[0], device=self.device))
                energy_end.append(all_mean(report.energy[-1], device=self.device))
            if traced:
                self.last_trace = report.trace
            if self.bp_model is not None:
                rng_pc = get_rng(self.device)
                set_rng(rng, self.device)
                t0 = time.perf_counter()
                self.bp_opt.zero_grad()
                loss = F.cross_entropy(self.bp_model(x), y)
                loss.backward()
                self.bp_dp.sync()
                self.bp_opt.step()
                bp_seconds += time.perf_counter() - t0
                bp_losses.append(all_mean(loss.detach().item(), device=self.device))
                set_rng(rng_pc, self.device)
            if on_batch is not None:
                on_batch(i + 1, n, losses[-1])
        self.epoch += 1
        test_loss, test_acc = evaluate(
            self.model, data.x_test, data.y_test, self.device, self.dtype
        )
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "rule": cfg.rule,
            "train_loss": sum(losses) / len(losses),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": seconds,
            # the energy when inference starts (the feed-forward pass: the loss term alone) and
            # when it ends, averaged over the epoch's batches; None where the rule tracks none
            "energy_start": _mean(energy_start),
            "energy_end": _mean(energy_end),
            "batches": n,
            "ranks": world_size(),
            "lr": lr_at(cfg, self.epoch * n - 1, cfg.epochs * n),  # the epoch's last step's
        }
        if self.bp_model is not None:
            bp_test_loss, bp_test_acc = evaluate(
                self.bp_model, data.x_test, data.y_test, self.device, self.dtype
            )
            row.update(
                bp_train_loss=sum(bp_losses) / len(bp_losses),
                bp_test_loss=bp_test_loss,
                bp_test_acc=bp_test_acc,
                bp_seconds=bp_seconds,
                max_param_diff=max_param_diff(self.model, self.bp_model),
            )
        self.metrics.append(row)
        return row

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a bitwise resume needs (loadable with ``torch.load(weights_only=True)``)."""
        state = {
            "format": "pccompile-train",
            "version": 1,
            "config": self.config.as_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "cuda_rng": get_rng(self.device)[1],
            "metrics": copy.deepcopy(self.metrics),
        }
        if self.bp_model is not None:
            state["bp_model"] = self.bp_model.state_dict()
            state["bp_optimizer"] = self.bp_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, optimizer, data order, global RNG, metrics)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.bp_model is not None:
            self.bp_model.load_state_dict(state["bp_model"])
            self.bp_opt.load_state_dict(state["bp_optimizer"])
        self.generator.set_state(state["generator"])
        set_rng((state["rng"], state.get("cuda_rng")), self.device)
        self.epoch = int(state["epoch"])
        self.metrics = list(state["metrics"])
