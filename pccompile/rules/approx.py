"""Approximate rules (IL, iPC) on the synchronous loop. Filled in by the approximate-rules work."""

from __future__ import annotations

from ..errors import ConfigError


def run(plan, ff, cfg, steps, target, loss_fn, trace):
    raise ConfigError(f"rule {cfg.name!r} is not available yet; use 'zil', 'fpa' or 'bp'.")
