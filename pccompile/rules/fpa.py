"""FPA: the fixed-prediction assumption (Millidge et al.; Rosenbaum's Torch2PC 'FixedPred').

Predictions ``mu_v`` and Jacobians are frozen at the feed-forward pass; the output error is
``-dL/dmu_out`` at that pass. With gamma = 1 the synchronous updates
``x_v += -eps_v + sum_c J_{c,v}^T eps_c`` make ``eps_v`` after ``s`` steps the sum over paths of
length <= ``s`` from ``v`` to the output, so after ``steps >= depth`` every error node holds BP's
gradient, on any DAG, leveled or not; parameters are read from that final state.

``efficient`` computes that fixed point directly (levels in increasing order, one VJP each);
``faithful`` runs the synchronous loop on the frozen graphs (any gamma, any number of steps).
"""

from __future__ import annotations

from ..config import FPA
from ..engine import Plan
from ..errors import ConfigError


def steps_for(plan: Plan, cfg: FPA) -> int:
    return plan.depth if cfg.steps is None else cfg.steps


def mode_for(plan: Plan, cfg: FPA, trace: bool) -> str:
    exact_fixed_point = cfg.gamma == 1.0 and steps_for(plan, cfg) >= plan.depth
    if cfg.mode == "efficient" and not exact_fixed_point:
        raise ConfigError(
            f"FPA(mode='efficient') computes the fixed point, reached only with gamma=1 and "
            f"steps >= depth ({plan.depth}); got gamma={cfg.gamma}, steps={steps_for(plan, cfg)}. "
            f"Use mode='faithful' to run the synchronous updates."
        )
    if cfg.mode == "auto":
        return "efficient" if exact_fixed_point and not trace else "faithful"
    return cfg.mode
