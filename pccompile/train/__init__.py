"""Training a model with a PC rule on a data set: the library behind ``pccompile train``.

:class:`TrainConfig` says how (rule, optimizer, epochs, batch size, seed); :class:`Trainer` runs
epochs (``opt.zero_grad(); pcm.learn(x, target=y, loss_fn=F.cross_entropy); opt.step()``),
evaluates on the test split, and saves/restores everything a bitwise-equal resume needs;
:func:`fit` runs it into an output directory (checkpoint every epoch, ``metrics.json``,
``model.pt``, ``curves.png``). See docs/train.md.
"""

from __future__ import annotations

from .curves import plot_curves
from .models import ResidualCNN
from .outputs import TRAIN_FILES, check_train_outdir, fit, load_checkpoint
from .trainer import TrainConfig, Trainer, batch_norms, check_fits

__all__ = [
    "TrainConfig",
    "Trainer",
    "ResidualCNN",
    "check_fits",
    "batch_norms",
    "fit",
    "load_checkpoint",
    "check_train_outdir",
    "plot_curves",
    "TRAIN_FILES",
]
