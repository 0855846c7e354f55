"""Plots of inference dynamics (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError
from .extras import require
from .rules import Trace

__all__ = ["plot_trace"]


def plot_trace(trace: Trace, path: str | Path, *, title: str = "") -> Path:
    """Draw total energy vs step and the error norm of each level vs step; save as PNG.

    The write is atomic: the PNG appears under ``path`` only once complete.

    Example:
        >>> report = pcm.learn(x, target=y, loss_fn=f, rule="zil", trace=True)
        >>> plot_trace(report.trace, "zil_dynamics.png")
    """
    require("plot", "plot_trace")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not trace.energy:
        raise ConfigError("The trace is empty: learn(..., trace=True) records one.")
    path = Path(path)
    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    steps = range(len(trace.energy))
    ax_e.plot(steps, trace.energy, marker="o", ms=3)
    ax_e.set(xlabel="inference step", ylabel="energy F", title="total energy")
    levels = trace.level_error_norms()
    cmap = plt.get_cmap("viridis", max(len(levels), 2))
    for i, (level, norms) in enumerate(levels.items()):
        ax_l.plot(steps, norms, color=cmap(i), lw=1, label=f"level {level}" if i % 5 == 0 else None)
    ax_l.set(xlabel="inference step", ylabel="||eps|| per level", title="error front")
    if any(n > 0 for norms in levels.values() for n in norms):
        ax_l.set_yscale("symlog", linthresh=1e-8)
    ax_l.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent or ".")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
