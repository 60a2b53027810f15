"""scratch: random initial weights, everything trains (the baseline transfer is compared with)."""

from medtl.core.strategies.spec import StrategySpec, nothing_frozen

SPEC = StrategySpec(name="scratch", summary="random initial weights, everything trains", freeze=nothing_frozen,
                    pretrained=False)
