"""OpRule: what the engine must know about one op to re-evaluate it during inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Kind", "OpRule"]

Kind = Literal["pure", "stochastic", "stateful", "opaque"]


@dataclass(frozen=True)
class OpRule:
    """What the engine must know about an op.

    kind:
        ``pure``: a deterministic function of its arguments and parameters.
        ``stochastic``: draws random numbers; the feed-forward RNG state is replayed whenever the
        vertex is re-evaluated, so every evaluation sees the same masks as BP's forward.
        ``stateful``: mutates module buffers (running statistics); re-evaluations run on copies.
        ``opaque``: a user-declared leaf; treated as both stochastic and stateful.
    """

    kind: Kind = "pure"
    note: str = ""
    differentiable: bool = True  # False: no gradient reaches the inputs (new_zeros, bernoulli)

    @property
    def replays_rng(self) -> bool:
        return self.kind in ("stochastic", "opaque")

    @property
    def protects_buffers(self) -> bool:
        return self.kind in ("stateful", "opaque")
