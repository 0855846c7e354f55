"""Per-vertex energies for the approximate rules (``IL(energies=...)``, ``pcm.infer``).

An energy is a callable ``E(x, mu) -> scalar``: the vertex's energy summed over the batch and its
elements, with ``x`` the value node and ``mu`` the prediction. The default is
:func:`squared_error`, the Gaussian of unit variance. An energy that is an ``nn.Module`` may hold
parameters (a learned variance): their gradient is written to ``.grad`` with the model's, scaled
alike (``dF/dphi / B``), so add them to the optimizer.

==========================  ===========================================  ====================
energy                      ``E(x, mu)``                                 pcx / fabricpc name
==========================  ===========================================  ====================
:func:`squared_error`       ``1/2 ||x - mu||^2``                         ``se_energy``
:class:`Gaussian`           ``1/2 (x - mu)^2 / var + 1/2 log var``       Gaussian with variance
:func:`cross_entropy`       ``-sum x log_softmax(mu)`` over dim 1        ``ce_energy``
:func:`bernoulli`           binary cross-entropy of logits ``mu``        Bernoulli
==========================  ===========================================  ====================
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["squared_error", "Gaussian", "cross_entropy", "bernoulli"]

Tensor = torch.Tensor


def squared_error(x: Tensor, mu: Tensor) -> Tensor:
    """``1/2 ||x - mu||^2`` summed over everything: a Gaussian of unit variance."""
    return 0.5 * F.mse_loss(x, mu, reduction="sum")  # one kernel forward, one backward


class Gaussian(nn.Module):
    """Gaussian energy with variance ``var``: ``sum 1/2 (x - mu)^2 / var + 1/2 log var``.

    Args:
        variance: the initial variance (``1 / precision``).
        learn: learn the variance (its logarithm is a parameter, updated from this vertex's own
            errors: at the optimum ``var`` is the mean squared error).
        shape: the variance's shape, broadcast against one sample (``()``: one per vertex;
            ``(C, 1, 1)``: one per channel of an image vertex).

    The log-variance is held in float64 until the first evaluation, which gives it the dtype
    and device of the vertex's errors (a float32 model gets a float32 parameter, a float64 one
    keeps the given variance exactly). The parameter stays the same object, so an optimiser
    built over it before the first step keeps working.
    """

    def __init__(self, variance: float = 1.0, *, learn: bool = False, shape: tuple = ()):
        super().__init__()
        if not (isinstance(variance, (int, float)) and variance > 0):
            raise ConfigError(f"Gaussian: variance must be > 0, got {variance!r}.")
        # float64, so log/exp round-trip the given variance in a float64 model
        log_var = torch.full(shape, math.log(variance), dtype=torch.float64)
        if learn:
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)

    @property
    def variance(self) -> Tensor:
        return self.log_var.detach().exp()

    def forward(self, x: Tensor, mu: Tensor) -> Tensor:
        e = x - mu
        if self.log_var.dtype != e.dtype or self.log_var.device != e.device:
            with torch.no_grad():  # follow the model (see the class docstring)
                self.log_var.data = self.log_var.data.to(e.device, e.dtype)
        log_var = self.log_var
        per = 0.5 * (e * e) * torch.exp(-log_var) + 0.5 * log_var
        return per.sum()


def cross_entropy(x: Tensor, mu: Tensor) -> Tensor:
    """``-sum x * log_softmax(mu, dim=1)``: a categorical over dim 1, ``x`` the (soft) labels."""
    return -(x * F.log_softmax(mu, dim=1)).sum()


def bernoulli(x: Tensor, mu: Tensor) -> Tensor:
    """Binary cross-entropy of the logits ``mu`` against ``x`` in [0, 1], summed."""
    return F.binary_cross_entropy_with_logits(mu, x, reduction="sum")
