"""The transfer strategies, one module each, registered here in the order they are offered.

A strategy is a record (`StrategySpec`): what trains, what is cached, what a step costs, how it is described.
Adding one is a module with its `SPEC` and a line below; code elsewhere asks the record
(`get_strategy(name).cached`), never compares the name (tests/interface/test_architecture.py checks it)."""

from __future__ import annotations

from medtl.core.errors import MedtlError
from medtl.core.strategies import auto, bitfit, full, linear, partial, scratch
from medtl.core.strategies.spec import StrategySpec

REGISTRY: dict[str, StrategySpec] = {s.name: s for s in (
    auto.SPEC,
    scratch.SPEC,
    linear.SPEC,
    partial.SPEC,
    full.SPEC,
    bitfit.SPEC,
)}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_strategy(name: str) -> StrategySpec:
    """The record of strategy `name`; one line naming the valid ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise MedtlError(f"unknown strategy '{name}'; valid: {', '.join(NAMES)}") from None


__all__ = ["NAMES", "REGISTRY", "StrategySpec", "get_strategy"]
