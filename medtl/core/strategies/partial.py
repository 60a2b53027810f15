"""partial: the top `model.unfreeze_stages` stages of the backbone train, the rest is frozen (its activations
cached when cache.cache_frozen); LP-FT: a linear probe sets the head first."""

from __future__ import annotations

from typing import Any

from medtl.core.errors import MedtlError
from medtl.core.strategies.spec import StrategySpec, freeze_modules

STEP_COST = 0.5  # a step of the top stages on cached activations against a full step


def _freeze(model: Any, spec: Any, unfreeze_stages: int) -> tuple[str, ...]:
    """Everything the frozen stages list; what the stages do not list (e.g. pooling) trains."""
    n = len(spec.stages)
    if not 1 <= unfreeze_stages < n:
        raise MedtlError(f"unfreeze_stages={unfreeze_stages} for '{spec.name}': must be 1..{n - 1} "
                         f"(it has {n} stages); use --strategy full to train all")
    return freeze_modules(model, tuple(name for stage in spec.stages[: n - unfreeze_stages] for name in stage))


SPEC = StrategySpec(name="partial", summary="the top stages of the pretrained backbone train, the rest is frozen",
                    freeze=_freeze, cached="activations", probe_first=True, step_cost=STEP_COST, uses_stages=True)
