"""Everything a run reports about one evaluated split: the metrics at the run's threshold, their 95 % bootstrap
intervals (per class too; over patients when keys are known) and the calibration, the metrics per subgroup; and the test metrics without the images
that also appear in train."""

from __future__ import annotations

import numpy as np

from medtl.evaluation.clusters import clustered
from medtl.evaluation.metrics import score
from medtl.evaluation.subgroups import subgroup_report
from medtl.evaluation.uncertainty import calibration, class_intervals, intervals


def split_report(y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float, resamples: int,
                 seed: int = 0, subgroups: dict[str, list[str]] | None = None,
                 clusters: list[str] | None = None) -> dict:
    """score() plus `ci95` {metric: [low, high]} (multiclass: also in each `per_class` entry), `interval_unit`
    (what the bootstrap resampled: `patient` with `clusters`, each image's patient key, that group some images;
    else `image`) and `calibration` {ece, brier, bins}; with `subgroups` ({column: each image's value},
    `DataSplits.attributes_of`), also `subgroups` and `subgroup_gaps` (`subgroup_report`)."""
    m = score(y, probs, classes, threshold)
    m["ci95"] = intervals(y, probs, threshold, resamples, seed, clusters=clusters)
    m["interval_unit"] = "patient" if clustered(clusters, len(y)) else "image"
    for k, ci in class_intervals(y, probs, resamples, seed, clusters=clusters).items():
        m["per_class"][classes[k]]["ci95"] = ci
    m["calibration"] = calibration(y, probs)
    if subgroups:
        m.update(subgroup_report(y, probs, classes, threshold, subgroups, resamples, seed))
    return m
