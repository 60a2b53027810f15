"""linear: the pretrained backbone frozen (BatchNorm in eval mode), only the new head trains, on cached features."""

from __future__ import annotations

from typing import Any

from medtl.core.strategies.spec import StrategySpec, freeze_modules


def _freeze(model: Any, spec: Any, unfreeze_stages: int) -> tuple[str, ...]:
    return freeze_modules(model, ("",))


SPEC = StrategySpec(name="linear", summary="pretrained backbone frozen, only the new head trains (a linear probe)",
                    freeze=_freeze, fine_tunes=False, cached="features")
