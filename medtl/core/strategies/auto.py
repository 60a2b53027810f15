"""auto: chooses among the other strategies on validation, within the run's budget (training/auto/search.py): a
linear probe first, then fine-tuning candidates by data size and similarity to ImageNet."""

from __future__ import annotations

from typing import Any

from medtl.core.errors import MedtlError
from medtl.core.strategies.spec import StrategySpec


def _freeze(model: Any, spec: Any, unfreeze_stages: int) -> tuple[str, ...]:
    raise MedtlError("strategy auto builds no model of its own: each candidate builds its own; pass a strategy "
                     "such as full to build one")


SPEC = StrategySpec(name="auto", summary="linear, then partial / full LP-FT, chosen on validation within the budget",
                    freeze=_freeze, chooses=True)
