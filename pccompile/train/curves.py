"""``curves.png``: training loss and test accuracy per epoch (needs the ``plot`` extra).

Reads: the metrics rows of :class:`pccompile.train.Trainer`. Writes: one picture, published
atomically (:func:`pccompile.io.atomic.atomic_output`); its format from the suffix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..extras import require
from ..io.atomic import atomic_output
from ..io.render import _MPL, figure_format

__all__ = ["plot_curves", "plot_runs"]


def plot_curves(metrics: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Draw train loss (left) and test accuracy (right) per epoch; BP's beside the rule's when
    the rows have ``bp_*`` columns.

    Raises:
        ConfigError: matplotlib is missing (``pip install 'pccompile[plot]'``), or the suffix is
            not a picture format.
    """
    fmt = figure_format(path)
    require("plot", "curves.png", _MPL)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [m["epoch"] for m in metrics]
    rule = metrics[0].get("rule", "pc") if metrics else "pc"
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2)
    for ax, key, label in zip(
        panels, ("train_loss", "test_acc"), ("training loss", "test accuracy")
    ):
        if metrics and "bp_" + key in metrics[0]:
            ax.plot(epochs, [m["bp_" + key] for m in metrics], "-", lw=4, alpha=0.4, label="bp")
        ax.plot(epochs, [m[key] for m in metrics], "o-", ms=3, label=rule)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    diffs = [m["max_param_diff"] for m in metrics if "max_param_diff" in m]
    if diffs:
        fig.suptitle(
            f"{rule} vs bp: max |theta_{rule} - theta_bp| after the last epoch {diffs[-1]:.1e}"
        )
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)


def plot_runs(runs: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike) -> None:
    """Several runs on one picture: training loss (left) and test accuracy (right) per epoch,
    one line per run (``{"bp": rows, "zil": rows, ...}``, rows as in ``metrics.json``)."""
    fmt = figure_format(path)
    require("plot", "plot_runs", _MPL)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2)
    styles = {"bp": {"lw": 5, "alpha": 0.35}}  # thick and pale, so a run on top of it shows
    for ax, key, label in zip(
        panels, ("train_loss", "test_acc"), ("training loss", "test accuracy")
    ):
        for name, rows in runs.items():
            style = styles.get(name, {"marker": "o", "ms": 3})
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], label=name, **style)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
