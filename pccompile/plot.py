"""Plots of inference dynamics (needs the ``plot`` extra: matplotlib).

Reads: a :class:`pccompile.Trace` (``pcm.learn(..., trace=True).trace``).
Writes: one picture, its format from the file's suffix (``.png``, ``.svg``, ``.pdf``), published
atomically with the user's umask (:func:`pccompile.io.atomic.atomic_output`).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .extras import require
from .io.atomic import atomic_output
from .io.render import _MPL, figure_format
from .rules import Trace

__all__ = ["plot_trace", "trace_caption"]


_EXACT = ("zil", "fpa")  # a rise is the front adding error terms, and behind it harmless
_DESCENT = ("il", "ipc", "epc")  # plain gradient descent: a rise is divergence


def _why_rise(rule: str) -> str:
    if rule in _EXACT:
        return (
            " It rises because the energy counts every error node: at step 0 only the output's "
            "loss term is non-zero, and each level the error reaches adds its 1/2||eps||^2 "
            "while the output's term is held (Z-IL reads each level's weights once, when the "
            "front arrives)."
        )
    if rule == "mcpc":
        return (
            " MCPC adds Langevin noise at every step, so the energy fluctuates around its "
            "typical value instead of falling monotonically."
        )
    if rule in _DESCENT:
        return (
            f" Under {rule.upper()}'s gradient steps a rise means inference diverges: the step "
            f"size gamma is too large for this energy (use a smaller gamma)."
        )
    return ""


def trace_caption(trace: Trace) -> str:
    """What :func:`plot_trace`'s picture shows, in words, from the trace's own numbers and the
    rule that ran (``trace.rule``)."""
    levels = trace.level_error_norms()
    steps = len(trace.energy)
    first = {lvl: next((s for s, n in enumerate(ns) if n > 0), None) for lvl, ns in levels.items()}
    reached = sorted((s, lvl) for lvl, s in first.items() if s is not None)
    finite = [e for e in trace.energy if math.isfinite(e)]
    bad = next((s for s, e in enumerate(trace.energy) if not math.isfinite(e)), None)
    e0, e1 = finite[0] if finite else math.nan, finite[-1] if finite else math.nan
    trend = "rises" if e1 > e0 * (1 + 1e-9) else ("falls" if e1 < e0 * (1 - 1e-9) else "stays")
    rose = any(b > a * (1 + 1e-5) for a, b in zip(finite, finite[1:]))
    why = _why_rise(trace.rule) if trend == "rises" or (rose and trace.rule in _DESCENT) else ""
    if trend != "rises" and why and trace.rule in _DESCENT:
        why = " It rises part-way." + why
    red = ""
    if bad is not None:
        red = "; red = not finite"
        why += (
            f" From step {bad} on F is not finite (the line stops): value nodes the front has "
            f"passed diverge; Z-IL has read their weights already, so its updates are unaffected."
            if trace.rule in _EXACT
            else f" From step {bad} on F is not finite (the line stops): inference diverged; "
            f"lower gamma."
        )
    front = (
        f" The error front reaches level {reached[-1][1]} at step {reached[-1][0]}"
        f" (first non-zero entry per level: the diagonal)."
        if reached
        else ""
    )
    name = f"{trace.rule.upper()}: " if trace.rule else ""
    return (
        f"{name}Left: total energy F = sum 1/2||eps||^2 + loss over {steps} inference steps; "
        f"it {trend} ({e0:.3g} -> {e1:.3g}{' while finite' if bad is not None else ''}).{why} "
        f"Right: each level's error norm per step "
        f"(colour, log scale; white = exactly zero, not yet reached{red}). Row 0 is the "
        f"output: its loss term."
        f"{front}"
    )


def plot_trace(trace: Trace, path: str | Path, *, title: str = "", overwrite: bool = True) -> Path:
    """Draw the total energy per step and a level x step map of error norms with a colour bar,
    captioned with what the picture shows (:func:`trace_caption`).

    The format follows the suffix (``.png``, ``.svg``, ``.pdf``; anything else is refused); the
    write is atomic: the picture appears under ``path`` only once complete.

    Raises:
        ConfigError: matplotlib is not installed (names ``pip install 'pccompile[plot]'``), the
            trace is empty, or the suffix is not a picture format.

    Example:
        >>> report = pcm.learn(x, target=y, loss_fn=f, rule="zil", trace=True)
        >>> plot_trace(report.trace, "zil_dynamics.png")
    """
    fmt = figure_format(path)
    require("plot", "plot_trace", _MPL)
    if not trace.energy:
        raise ConfigError("The trace is empty: learn(..., trace=True) records one.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    caption = textwrap.fill(trace_caption(trace), 150)
    n_lines = caption.count("\n") + 1
    fig = Figure(figsize=(12, 4.6 + 0.17 * n_lines))
    FigureCanvasAgg(fig)
    bottom = (0.55 + 0.17 * n_lines) / (4.6 + 0.17 * n_lines)
    top = 0.86
    _energy_panel(fig.add_axes((0.06, bottom, 0.36, top - bottom)), trace)
    axes = (
        fig.add_axes((0.5, bottom, 0.4, top - bottom)),
        fig.add_axes((0.915, bottom, 0.015, top - bottom)),
    )
    _front_panel(fig, *axes, trace)
    if title:
        fig.suptitle(title, x=0.06, ha="left", y=0.97)
    fig.text(0.06, 0.02, caption, fontsize=8, va="bottom", ha="left", wrap=False)
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format=fmt, dpi=110)
    return Path(os.fspath(path))


def _energy_panel(ax, trace: Trace) -> None:
    from matplotlib.ticker import MaxNLocator

    steps = len(trace.energy)
    ax.plot(range(steps), trace.energy, marker="o", ms=3, color="#4c72b0")
    ax.set(xlabel="inference step", ylabel="energy F", title="total energy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, steps - 0.5)
    finite = [e for e in trace.energy if math.isfinite(e)]
    if finite and min(finite) > 0 and max(finite) > 1e3 * min(finite):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _level_grid(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Error norm per (level, step), row 0 the output's loss term; NaN where exactly zero, and
    where it is not finite."""
    levels = dict(trace.level_error_norms())
    out = trace.vertex_energy.get("output")
    if out is not None and 0 not in levels:
        levels[0] = list(out)
    grid = np.full((max(levels, default=0) + 1, len(trace.energy)), np.nan)
    diverged = np.zeros(grid.shape, dtype=bool)
    for lvl, norms in levels.items():
        for step, n in enumerate(norms):
            if not math.isfinite(n):
                diverged[lvl, step] = True
            elif n > 0:
                grid[lvl, step] = n
    return grid, diverged


def _front_panel(fig, ax, cax, trace: Trace) -> None:
    """The level x step map: white where the error is exactly zero (the front has not arrived),
    red where it is not finite (diverged behind the front), a log colour scale elsewhere."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    grid, diverged = _level_grid(trace)
    positive = grid[np.isfinite(grid)]
    cmap = colormaps["viridis"].with_extremes(bad="white", over="#d62728")
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    else:
        norm = LogNorm(vmin=1e-12, vmax=1.0)
    grid[diverged] = norm.vmax * 10
    depth, steps = grid.shape[0] - 1, grid.shape[1]
    img = ax.imshow(
        np.ma.masked_invalid(grid),
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        norm=norm,
        extent=(-0.5, steps - 0.5, -0.5, depth + 0.5),
    )
    from matplotlib.ticker import MaxNLocator

    ax.set(xlabel="inference step", ylabel="level (0 = output: loss term)", title="error front")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(
        img,
        cax=cax,
        label="||eps|| of the level" + (" (red: not finite)" if diverged.any() else ""),
        extend="max" if diverged.any() else "neither",
    )
