"""Typed rule configurations.

A rule is chosen by name (``"zil"``) or by one of these frozen dataclasses; both are validated
on construction, so a bad option fails at ``convert``/``learn`` time with a message that names
it, never deep inside inference.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from .errors import ConfigError

__all__ = ["BP", "ZIL", "FPA", "IL", "IPC", "RuleConfig", "make_rule"]

Mode = Literal["auto", "efficient", "faithful"]
_MODES = ("auto", "efficient", "faithful")


def _check_gamma(gamma: float, name: str) -> None:
    if not (isinstance(gamma, (int, float)) and 0.0 < float(gamma) <= 1.0):
        raise ConfigError(f"{name}: gamma must be a number in (0, 1], got {gamma!r}.")


def _check_steps(steps: int | None, name: str) -> None:
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise ConfigError(
            f"{name}: steps must be a non-negative int or None (= the graph's default), "
            f"got {steps!r}."
        )


def _check_mode(mode: str, name: str) -> None:
    if mode not in _MODES:
        raise ConfigError(f"{name}: mode must be one of {_MODES}, got {mode!r}.")


@dataclass(frozen=True)
class BP:
    """Plain autograd backward through the whole model: the reference for every rule."""

    name: str = "bp"


@dataclass(frozen=True)
class ZIL:
    """Zero-divergence inference learning (Song et al. 2020): exactly BP on a leveled graph.

    Args:
        gamma: inference step size. Only ``1.0`` is exact; other values scale the update of a
            vertex at level ``l`` by ``gamma**l`` (useful to see the machinery at work).
        steps: inference steps ``t = 0 .. steps-1``; the weights of a vertex at level ``l`` are
            read at step ``t = l``. ``None`` means ``depth + 1`` (every level gets its update).
        mode: ``"efficient"`` runs the event-driven schedule (only the level-``t`` frontier at
            step ``t``, one local VJP per vertex); ``"faithful"`` updates every value node at
            every step as the papers write it (same parameter updates, per-step energies);
            ``"auto"`` picks efficient whenever it is provably identical.
    """

    gamma: float = 1.0
    steps: int | None = None
    mode: Mode = "auto"
    name: str = "zil"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma, "ZIL")
        _check_steps(self.steps, "ZIL")
        _check_mode(self.mode, "ZIL")


@dataclass(frozen=True)
class FPA:
    """Fixed-prediction assumption: predictions and Jacobians frozen at the feed-forward pass.

    With ``gamma=1`` and ``steps >= depth`` the error nodes reach BP's gradients on any DAG,
    leveled or not. ``steps=None`` means ``depth``.
    """

    gamma: float = 1.0
    steps: int | None = None
    mode: Mode = "auto"
    name: str = "fpa"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma, "FPA")
        _check_steps(self.steps, "FPA")
        _check_mode(self.mode, "FPA")


@dataclass(frozen=True)
class IL:
    """Standard inference learning: ``steps`` inference steps of size ``gamma`` on the full
    energy, then every weight from the final state. Approximates BP.

    Args:
        output_precision: weight ``1/k`` of the loss term in the energy; the parameter update is
            multiplied by ``k`` so that small precisions approach BP (Whittington & Bogacz).
        init: ``"forward"`` starts value nodes at the feed-forward pass.
    """

    gamma: float = 0.1
    steps: int | None = None
    output_precision: float = 1.0
    init: Literal["forward"] = "forward"
    name: str = "il"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma, "IL")
        _check_steps(self.steps, "IL")
        if not (isinstance(self.output_precision, (int, float)) and self.output_precision > 0):
            raise ConfigError(f"IL: output_precision must be > 0, got {self.output_precision!r}.")
        if self.init != "forward":
            raise ConfigError(f"IL: init must be 'forward', got {self.init!r}.")


@dataclass(frozen=True)
class IPC:
    """Incremental PC: value nodes and parameters are updated at every inference step.

    ``lr`` is the parameter step applied inside inference; the summed update is also written to
    ``p.grad`` so an outer optimizer can be used instead (set ``lr=0``).
    """

    gamma: float = 0.1
    steps: int | None = None
    lr: float = 0.0
    name: str = "ipc"

    def __post_init__(self) -> None:
        _check_gamma(self.gamma, "IPC")
        _check_steps(self.steps, "IPC")
        if not (isinstance(self.lr, (int, float)) and self.lr >= 0):
            raise ConfigError(f"IPC: lr must be >= 0, got {self.lr!r}.")


RuleConfig = BP | ZIL | FPA | IL | IPC
_BY_NAME = {"bp": BP, "zil": ZIL, "fpa": FPA, "il": IL, "ipc": IPC}


def make_rule(rule: str | RuleConfig, **options) -> RuleConfig:
    """Return a validated rule config from a name or a config, with ``options`` overriding fields.

    Raises:
        ConfigError: unknown rule name or option.
    """
    if isinstance(rule, str):
        cls = _BY_NAME.get(rule.lower())
        if cls is None:
            raise ConfigError(f"Unknown rule {rule!r}; choose one of {sorted(_BY_NAME)}.")
        base = cls()
    elif isinstance(rule, tuple(_BY_NAME.values())):
        base = rule
    else:
        raise ConfigError(
            f"rule must be a name {sorted(_BY_NAME)} or a config object (pccompile.ZIL(...)), "
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
