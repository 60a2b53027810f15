"""Referral by split-conformal prediction: a set of classes per image that holds the true class with the
chosen probability (`coverage`), calibrated on the run's validation images.

Score of an image with true class y: 1 - p(y) (the "least ambiguous set" score of Sadinle et al. 2019, which
gives the smallest sets). With n calibration scores, the threshold is their ceil((n + 1) * coverage)-th
smallest (the finite-sample quantile: for a new image exchangeable with the calibration images, P(true class in
set) >= coverage); when that rank is above n, every class is in every set. An image's set is every class with
1 - p(class) <= threshold. An image whose set is not a single class (two or more classes, or none), or not the
class the run predicts (a binary run's threshold need not be 0.5), is "refer": the model is not sure enough at
this coverage and a person should read it.

The default coverage, `DEFAULT_COVERAGE` = 0.9, is the usual choice in the conformal literature; a screening
setting that must miss fewer true classes asks for more (`--coverage 0.95`) and refers more images.
"""

from __future__ import annotations

import math

import numpy as np

from medtl.core.errors import MedtlError
from medtl.evaluation.metrics import class_table

DEFAULT_COVERAGE = 0.9


def check_coverage(coverage: float) -> float:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
        raise MedtlError(f"--coverage {coverage!r} is not a coverage; pass a fraction between 0 and 1, e.g. "
                         "--coverage 0.9")
    return float(coverage)


def nonconformity(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - p(true class) per image; `probs` (N, K), or a binary model's (N,) positive-class probabilities."""
    table = class_table(probs)
    return 1.0 - table[np.arange(len(table)), np.asarray(labels, dtype=int)]


def conformal_threshold(cal_scores: np.ndarray, coverage: float) -> float:
    """The finite-sample quantile of the calibration scores (inf when there are too few for `coverage`)."""
    scores = np.sort(np.asarray(cal_scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * coverage)
    return math.inf if rank > len(scores) else float(scores[rank - 1])


def prediction_sets(probs: np.ndarray, qhat: float) -> np.ndarray:
    """(N, K) bool: the classes in each image's set."""
    return 1.0 - class_table(probs) <= qhat + 1e-12  # a score equal to the threshold is in (float rounding)


def refer(sets: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
    """True where the set is not a single class, or (given the run's `predicted` class per image: a binary
    run's threshold need not be 0.5) not the predicted class alone."""
    single = sets.sum(1) == 1
    if predicted is not None:
        single &= sets[np.arange(len(sets)), np.asarray(predicted, dtype=int)]
    return ~single


def referral(probs: np.ndarray, cal_scores: np.ndarray, coverage: float,
             predicted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sets, refer) of new images' probabilities at `coverage`, calibrated on `cal_scores`."""
    sets = prediction_sets(probs, conformal_threshold(cal_scores, coverage))
    return sets, refer(sets, predicted)


def referral_section(reference, probs: np.ndarray, labels: np.ndarray | None, coverage: float,
                     predicted: np.ndarray | None = None) -> dict:
    """For an evaluation folder: the referral rate at `coverage` and, with labels, the coverage reached (share
    of images whose set holds the true class) and the accuracy on the images not referred. `predicted`: the
    run's class per image (its threshold), as `refer` takes it. `reference`: the
    run's FeatureReference (evaluation/shift.py), or None for a run made before it was kept."""
    from medtl.evaluation.shift import NOT_AVAILABLE

    if reference is None:
        return {"available": False, "verdict": NOT_AVAILABLE}
    coverage = check_coverage(coverage)
    qhat = conformal_threshold(reference.cal_scores, coverage)
    sets = prediction_sets(probs, qhat)
    referred = refer(sets, predicted)
    out = {"available": True, "coverage": coverage, "calibration_images": int(len(reference.cal_scores)),
           "threshold": qhat if math.isfinite(qhat) else None, "images": int(len(sets)),
           "referral_rate": float(referred.mean()) if len(sets) else math.nan,
           "mean_set_size": float(sets.sum(1).mean()) if len(sets) else math.nan}
    if labels is not None and len(sets):
        labels = np.asarray(labels, dtype=int)
        covered = sets[np.arange(len(sets)), labels]
        kept = ~referred
        out["coverage_reached"] = float(covered.mean())
        out["accuracy_not_referred"] = float(covered[kept].mean()) if kept.any() else math.nan
    return out
