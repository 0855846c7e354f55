"""MCPC: Monte Carlo predictive coding (Oliviers, Tang & Bogacz 2024), Langevin inference.

IL's inference with a noise term: every free value node takes
``x <- x - gamma * dF/dx + sqrt(2 gamma T) * xi`` with ``xi ~ N(0, I)`` and temperature ``T``
(1: samples of the posterior ``exp(-F)``), then every parameter's gradient from the final
sample, ``p.grad += dF/dtheta / (w B)`` as in IL. The draws come from a generator of their own,
seeded by ``seed`` (or, when ``seed`` is None, by one draw from torch's global RNG, so
``torch.manual_seed`` makes a run reproducible); the model's own random ops are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..engine import Grads
from ..engine.inference import Setup
from ..errors import ConfigError
from .il import ILRule, check_approximate, compiled

__all__ = ["MCPC", "MCPCRule"]


@dataclass(frozen=True)
class MCPC:
    """Langevin inference: IL's steps plus ``sqrt(2 gamma temperature)`` Gaussian noise.

    Args:
        gamma, steps, output, output_precision, precision, energies, init: as in
            :class:`pccompile.IL`.
        temperature: scales the noise's variance (0: IL).
        seed: seed of the noise's generator (None: drawn from torch's global RNG).
        compile: the loop as one ``torch.compile``d function (as ``IL(compile=...)``); the noise
            is drawn before it, in the eager loop's order, so both give the same numbers.
    """

    gamma: float = 0.1
    steps: int | None = None
    temperature: float = 1.0
    seed: int | None = None
    output: Literal["clamp", "free"] = "clamp"
    output_precision: float = 1.0
    precision: Mapping[str, float] = field(default_factory=dict)
    energies: Mapping[str, Callable] = field(default_factory=dict)
    init: str | Callable = "forward"
    vertex_gamma: Mapping[str, float] = field(default_factory=dict)
    vertex_steps: Mapping[str, int] = field(default_factory=dict)
    compile: bool | str = False
    name: str = "mcpc"

    def __post_init__(self) -> None:
        check_approximate(self, "MCPC")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ConfigError(f"MCPC: temperature must be >= 0, got {self.temperature!r}.")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ConfigError(f"MCPC: seed must be an int or None, got {self.seed!r}.")


class MCPCRule(ILRule):
    name = "mcpc"
    config = MCPC

    def run_phase(self, plan, ff, cfg: MCPC, setup: Setup, target, loss_fn, trace) -> Grads:
        seed = cfg.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        scale = math.sqrt(2.0 * setup.gamma * cfg.temperature)
        gens: dict[torch.device, torch.Generator] = {}

        def noise(x: torch.Tensor) -> torch.Tensor:
            g = gens.get(x.device)
            if g is None:
                g = gens[x.device] = torch.Generator(x.device).manual_seed(seed)
            return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * scale

        if cfg.compile:
            if cfg.init != "forward" or scale == 0:
                raise ConfigError("MCPC(compile=True) needs init='forward' and temperature > 0.")
            return compiled(
                plan, ff, target, loss_fn, setup, trace, "mcpc", backend=cfg.compile, noise=noise
            )
        noisy = noise if scale > 0 else None
        return self.eager_phase(plan, ff, cfg, setup, target, loss_fn, trace, noise=noisy)
