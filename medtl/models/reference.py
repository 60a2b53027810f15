"""A classifier's logits and pooled backbone features in one pass: what shift detection (evaluation/shift.py)
measures new images by, without a second forward pass."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from medtl.models.strategies import Classifier


class WithFeatures(nn.Module):
    """(N, L + D): the logits (of the image and its mirror averaged with `tta`, as `Mirrored` does) and the
    image's pooled backbone features, side by side, so one exported graph gives both."""

    def __init__(self, model: Classifier, tta: bool = False):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.backbone(x)
        logits = self.model.head(feats)
        if self.tta:
            logits = (logits + self.model(torch.flip(x, dims=[3]))) / 2
        return torch.cat([logits.float(), feats.float()], 1)


def outputs_of(model: Classifier) -> int:
    """How many logits the classifier's head gives (1 for a binary run)."""
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def split(out: torch.Tensor, logits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of a `WithFeatures` output."""
    return out[:, :logits], out[:, logits:]


@torch.inference_mode()
def logits_and_features(model: Classifier, batches: Iterable, prepare: Callable[[torch.Tensor], torch.Tensor],
                        tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, L), features (N, D)) float32 over `batches` of (pixels, labels), the model in eval mode."""
    net = WithFeatures(model, tta).eval()
    n, outs = outputs_of(model), []
    for x, _ in batches:
        outs.append(net(prepare(x)).float().cpu())
    out = torch.cat(outs)
    logits, feats = split(out, n)
    return logits.numpy(), feats.numpy()
