"""Everything a run reports about one evaluated split: the metrics at the run's threshold, their 95 % bootstrap
intervals and the calibration; and the test metrics without the images that also appear in train."""

from __future__ import annotations

import numpy as np

from medtl.evaluation.metrics import score
from medtl.evaluation.uncertainty import calibration, intervals


def split_report(y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float, resamples: int,
                 seed: int = 0) -> dict:
    """score() plus `ci95` {metric: [low, high]} and `calibration` {ece, brier, bins}."""
    m = score(y, probs, classes, threshold)
    m["ci95"] = intervals(y, probs, threshold, resamples, seed)
    m["calibration"] = calibration(y, probs)
    return m


def without_train_copies(test_keys: list[str], train_keys: set[str]) -> np.ndarray:
    """Indices of the test images whose content (or near-duplicate cluster) key does not occur in train."""
    return np.array([i for i, k in enumerate(test_keys) if k not in train_keys], dtype=np.int64)
