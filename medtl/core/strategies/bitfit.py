"""bitfit: of the pretrained backbone only the biases and the normalisation layers' scale and shift train (with
the new head): BitFit (Ben Zaken et al., 2022), as it is used for CNNs, whose convolutions before a BatchNorm have
no bias. A fraction of a percent of the weights train; the BatchNorm statistics follow the new images. LP-FT: a
linear probe sets the head first. Not among auto's candidates (its plan orders full and partial by data size
and similarity): on Kermany at 128 px an epoch took 0.67 of full's, and validation AUC stayed well below full's."""

from __future__ import annotations

from typing import Any

from medtl.core.strategies.spec import StrategySpec


def _freeze(model: Any, spec: Any, unfreeze_stages: int) -> tuple[str, ...]:
    """Every backbone weight off but the biases and the normalisation layers' own parameters; no module is
    held in eval mode (the statistics adapt)."""
    from torch import nn  # here, not at import: the config (and so the command line) loads without torch

    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)
    for module in model.backbone.modules():
        norm = isinstance(module, norms)
        for name, p in module.named_parameters(recurse=False):
            p.requires_grad = norm or name == "bias"
    return ()


SPEC = StrategySpec(name="bitfit", summary="only the biases and normalisation parameters of the pretrained backbone "
                    "train, with the head (BitFit)", freeze=_freeze, probe_first=True,
                    step_cost=0.67)  # measured: Kermany, 128 px, batch 32, 800 images: 11.5 s an epoch, full 17.1 s
