"""Rules: learning rules over the one engine in :mod:`pccompile.engine`, one file each.

=========  ======================================================  =========================
name       file                                                    exact?
=========  ======================================================  =========================
``bp``     :mod:`.bp` (autograd backward: the reference)           by definition
``zil``    :mod:`.zil` (schedules: :mod:`.propagate`, :mod:`.sync`)  gamma=1, leveled graph
``fpa``    :mod:`.fpa` (schedules: :mod:`.propagate`, :mod:`.sync`)  gamma=1, steps >= depth
``il``     :mod:`.il` (:mod:`.sync`)                               approximates BP
``ipc``    :mod:`.ipc` (:mod:`.sync`)                              approximates BP
``epc``    :mod:`.epc` (errors relaxed by reverse passes)          approximates BP
``mcpc``   :mod:`.mcpc` (Langevin inference)                       samples, not BP
=========  ======================================================  =========================

Every rule implements :class:`~pccompile.rules.base.Rule`; :func:`make_rule` builds a validated
config from a name or config object, and :func:`rule_of` returns the rule object for a config.
"""

from __future__ import annotations

from dataclasses import fields, replace

from ..errors import ConfigError
from .base import Rule, Schedule
from .bp import BP, BPRule
from .epc import EPC, EPCRule
from .fpa import FPA, FPARule
from .il import IL, ILRule
from .ipc import IPC, IPCRule
from .mcpc import MCPC, MCPCRule
from .report import LearnReport, Trace
from .zil import ZIL, ZILRule

__all__ = [
    "BP",
    "EPC",
    "FPA",
    "IL",
    "IPC",
    "MCPC",
    "ZIL",
    "RULES",
    "LearnReport",
    "Rule",
    "RuleConfig",
    "Schedule",
    "Trace",
    "make_rule",
    "rule_of",
]

RuleConfig = BP | ZIL | FPA | IL | IPC | EPC | MCPC
RULES: dict[str, Rule] = {
    r.name: r for r in (BPRule(), ZILRule(), FPARule(), ILRule(), IPCRule(), EPCRule(), MCPCRule())
}
_CONFIGS = tuple(r.config for r in RULES.values())
_DEFAULTS = {name: r.config() for name, r in RULES.items()}  # frozen: one instance each is enough


def rule_of(cfg: RuleConfig) -> Rule:
    """The rule object that runs ``cfg``."""
    return RULES[cfg.name]


def make_rule(rule: str | RuleConfig, **options) -> RuleConfig:
    """Return a validated rule config from a name or a config, with ``options`` overriding fields.

    Raises:
        ConfigError: unknown rule name or option.
    """
    if isinstance(rule, str):
        base = _DEFAULTS.get(rule.lower())
        if base is None:
            raise ConfigError(f"Unknown rule {rule!r}; choose one of {sorted(RULES)}.")
    elif isinstance(rule, _CONFIGS):
        base = rule
    else:
        raise ConfigError(
            f"rule must be a name {sorted(RULES)} or a config object (pccompile.ZIL(...)), "
            f"got {type(rule).__name__}."
        )
    if not options:
        return base
    known = {f.name for f in fields(base)} - {"name"}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(
            f"Option(s) {bad} do not apply to rule {base.name!r}; its options are {sorted(known)}."
        )
    return replace(base, **options)
