"""What training produces, as records: the scores of a split and the result of one fit.

Training returns validation scores only (`TrainResult.scores["val"]`); test is scored once, by the run's
finalize phase, after every choice (strategy, mirror, calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AUC_TIE = 0.002  # validation AUCs this close count as equal; the lower validation loss wins


@dataclass(frozen=True)
class SplitScores:
    """Probabilities of one split, in the split's image order, with their labels.

    Attributes:
        probs: (N,) positive-class probabilities for a binary task, else (N, K).
        labels: (N,) class indices.
    """

    probs: np.ndarray
    labels: np.ndarray

    def __iter__(self):  # `probs, labels = scores`
        return iter((self.probs, self.labels))

    def subset(self, rows) -> "SplitScores":
        return SplitScores(self.probs[rows], self.labels[rows])


@dataclass
class TrainResult:
    """One fit: its per-epoch history, the epoch whose weights were kept, and scores by split.

    Attributes:
        history: One dict per epoch run (train_loss, val_loss, val_auc, ..., seconds).
        best_epoch: 1-based epoch whose weights the model holds.
        scores: `SplitScores` by split name; training fills "val" only.
    """

    history: list[dict]
    best_epoch: int
    scores: dict[str, SplitScores] = field(default_factory=dict)

    @property
    def best(self) -> dict:
        """The history row of the kept epoch."""
        return self.history[self.best_epoch - 1]


def monitor_key(val: dict, monitor: str) -> tuple[float, float]:
    """Larger is better; AUC ties (common once validation is separable) go to the lower loss."""
    if monitor == "auc" and not math.isnan(val["auc"]):
        return (val["auc"], -val["loss"])
    return (-val["loss"], 0.0) if monitor == "loss" else (-math.inf, -val["loss"])


def beats(a: dict, b: dict, monitor: str) -> bool:
    """Validation scores `a` ({auc, loss}) beat `b` by `monitor`, except that AUCs within AUC_TIE of each other
    (a saturated validation AUC differs in its fourth decimal by chance) count as a tie, won by the lower loss."""
    if monitor == "auc" and abs(a["auc"] - b["auc"]) <= AUC_TIE:
        return a["loss"] < b["loss"]
    return monitor_key(a, monitor) > monitor_key(b, monitor)
