"""full: pretrained initial weights, everything trains; LP-FT: a linear probe sets the head first."""

from medtl.core.strategies.spec import StrategySpec, nothing_frozen

SPEC = StrategySpec(name="full", summary="pretrained initial weights, everything trains (full fine-tuning)",
                    freeze=nothing_frozen, probe_first=True)
