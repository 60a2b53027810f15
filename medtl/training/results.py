"""What training produces, as records: the scores of a split and the result of one fit.

Training returns validation scores only (`TrainResult.scores["val"]`); test is scored once, by the run's
finalize phase, after every choice (strategy, mirror, calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
