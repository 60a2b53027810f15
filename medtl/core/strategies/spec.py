"""The record every transfer strategy is: what it trains, what it caches, what it costs and how it is described.

A strategy's module (scratch.py, linear.py, ...) holds one `StrategySpec` and its `freeze` rule; the registry
(`medtl.core.strategies`) lists them. Every other module asks the record (`get_strategy(name).cached`, ...),
never the name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

# a classifier (models.strategies.Classifier: `.backbone`, `.head`), its backbone's spec (`.stages`), and
# model.unfreeze_stages -> the backbone modules frozen (kept in eval mode: their BatchNorm statistics stay)
Freeze = Callable[[Any, Any, int], tuple[str, ...]]


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """One transfer strategy.

    Attributes:
        name: What `model.strategy` (`--strategy`) says.
        summary: One line for the help, the docs and the model card.
        freeze: Sets `requires_grad` off on what does not train (every parameter trains before it runs) and
            returns the backbone modules to keep in eval mode.
        pretrained: Starts from pretrained weights (scratch: from random ones, and refuses others).
        fine_tunes: Backbone weights train on the images (auto times these epochs; a probe's are not such).
        cached: What of the frozen part is cached between epochs: `features` (the whole backbone frozen: the
            head trains on its pooled features), `activations` (the frozen prefix's output, when
            cache.cache_frozen), or None (the whole network runs on the images).
        probe_first: LP-FT applies (`train.head_init=probe`): a linear probe sets the head first.
        step_cost: A training step's cost against a full fine-tuning step (auto's plan, until measured).
        uses_stages: Reads `model.unfreeze_stages` (tuning searches it).
        chooses: Not a strategy of its own: chooses among the others on validation (auto).
    """

    name: str
    summary: str
    freeze: Freeze
    pretrained: bool = True
    fine_tunes: bool = True
    cached: Literal["features", "activations"] | None = None
    probe_first: bool = False
    step_cost: float = 1.0
    uses_stages: bool = False
    chooses: bool = False


def freeze_modules(model: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """Turn off `requires_grad` under each backbone module of `names` ('' is the whole backbone); returns them."""
    for name in names:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad = False
    return names


def nothing_frozen(model: Any, spec: Any, unfreeze_stages: int) -> tuple[str, ...]:
    return ()
