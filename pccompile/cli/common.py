"""What every ``pccompile`` command shares: exit codes, the progress bar, building the model from
the command-line options, and the rule they name.

Reads: the parsed arguments (``argparse.Namespace``) and, through :mod:`pccompile.modelspec`, the
MODEL spec, ``--weights`` file and input shapes.
Writes: the progress bar on stderr (only when stderr is a terminal and not ``--quiet``/``--json``);
its elapsed time ticks twice a second and it names the step inside a stage, so it moves during
long work.
Invariants: the random init, the random inputs and the default loss's target depend only on
``--seed``; the model is in the requested training mode when it is converted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..api import convert
from ..io.atomic import check_output
from ..io.weights import load_weights
from ..modelspec import (
    ModelSpec,
    Shape,
    build_model,
    check_forward,
    check_leaf_modules,
    parse_shapes,
    parse_spec,
    random_inputs,
)
from ..module import PCModule
from ..rules import RuleConfig, make_rule
from .base import (
    DTYPE_NAMES,
    EXIT_FAIL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
)

__all__ = [
    "EXIT_OK",
    "EXIT_FAIL",
    "EXIT_USAGE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "DTYPES",
    "CLIError",
    "Loaded",
    "load_model",
    "convert_loaded",
    "rule_from_args",
    "progress",
    "emit",
    "check_outputs",
]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
TICK_SECONDS = 0.5


class Progress:
    """One tqdm bar over a command's stages, on stderr; off with --quiet, when not a TTY, or
    without tqdm installed (the optional extra ``pccompile[progress]``).

    A daemon thread refreshes the bar every :data:`TICK_SECONDS`, so its elapsed time moves
    while a stage works; :meth:`note` shows the step inside a stage (``bp step``, ``training
    step 2/3``)."""

    def __init__(self, stages: Sequence[str], quiet: bool):
        self.bar = None
        self._stop = threading.Event()
        try:
            from tqdm.auto import tqdm
        except ImportError:  # optional: the commands work the same without a bar
            return
        self.bar = tqdm(
            total=len(stages),
            disable=True if quiet else None,
            file=sys.stderr,
            leave=False,
            bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed}]{postfix}",
        )
        if not self.bar.disable:
            threading.Thread(target=self._tick, name="pccompile-progress", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.bar.refresh()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.bar is not None:
            self.bar.set_description_str(name)
            self.bar.set_postfix_str("")
        yield
        if self.bar is not None:
            self.bar.update(1)

    def note(self, text: str) -> None:
        """Say what the current stage is doing now (shown after the elapsed time)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress(args: argparse.Namespace, *stages: str) -> Iterator[Progress]:
    bar = Progress(stages, args.quiet or args.json)
    try:
        yield bar
    finally:
        bar.close()


@dataclass
class Loaded:
    """A model built from the command line, its example inputs and its eval-mode output."""

    spec: ModelSpec
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    shapes: list[Shape]
    dtype: torch.dtype
    output: Any


def load_model(args: argparse.Namespace) -> Loaded:
    """Build MODEL (seeded init, ``--weights``, ``--dtype``), make random inputs of the input
    shapes and run it once in the requested mode, so a shape error is reported before tracing."""
    torch.manual_seed(args.seed)  # reproducible random init
    spec = parse_spec(args.model)
    if args.num_classes is not None and args.num_classes <= 0:
        raise CLIError(f"--num-classes must be positive, got {args.num_classes}.")
    built = build_model(spec, args.num_classes, config=getattr(args, "config", None))
    model = built.model
    if args.weights:
        load_weights(model, args.weights)
    dtype = DTYPES[args.dtype]
    model.to(dtype)
    shapes = parse_shapes(args.input_shape) if args.input_shape else built.default_shapes
    if not shapes:
        raise CLIError(
            f"{spec} does not say its input shape; pass --input-shape (batch first, e.g. "
            f"--input-shape 2,3,32,32), or define INPUT_SHAPE = (2, 3, 32, 32) in its module."
        )
    inputs = random_inputs(shapes, dtype, args.seed, vocab_size=built.vocab_size)
    output = check_forward(model, inputs, training=bool(getattr(args, "train_mode", False)))
    model.train(bool(getattr(args, "train_mode", False)))
    return Loaded(spec, model, inputs, shapes, dtype, output)


def check_outputs(args: argparse.Namespace, *paths: str | None, directory: bool = False) -> None:
    """Check each output path before any work: it must be new (or ``--force`` may replace it:
    only a file, or a directory pccompile wrote) and its folder writable."""
    for path in paths:
        if path:
            check_output(path, overwrite=getattr(args, "force", False), directory=directory)


def convert_loaded(args: argparse.Namespace, loaded: Loaded, rule: Any = "zil") -> PCModule:
    check_leaf_modules(loaded.model, args.leaf_module)
    x = loaded.inputs[0] if len(loaded.inputs) == 1 else loaded.inputs
    capture = getattr(args, "capture", "auto")
    granularity = getattr(args, "granularity", None)
    return convert(
        loaded.model,
        x,
        rule,
        leaf_modules=args.leaf_module,
        capture=capture,
        granularity=granularity,
    )


def rule_from_args(args: argparse.Namespace) -> RuleConfig:
    """``--rule`` with the ``--gamma``/``--steps``/``--mode`` that were given."""
    opts = {k: getattr(args, k) for k in ("gamma", "steps", "mode") if getattr(args, k) is not None}
    return make_rule(args.rule, **opts)


def emit(args: argparse.Namespace, text: str) -> None:
    """Print ``text`` unless ``--quiet`` or ``--json``."""
    if not (args.quiet or args.json):
        print(text)
