"""Operating points of a binary model: the threshold a spec chooses on validation, and the rates it reaches.

A spec is `youden`, `f1`, a fixed number, or a target such as `sensitivity>=0.95` (the threshold with the
highest specificity among those reaching that sensitivity on validation) or `specificity>=0.90`. Every rate is
reported with its 95 % bootstrap interval, on validation (where it was chosen) and on the evaluated data.
Net benefit (decision curves, Vickers & Elkin 2006) weighs true positives against false positives at the odds
of each threshold probability.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from medtl.core.config.values import THRESHOLD_HELP, threshold_spec
from medtl.core.errors import MedtlError
from medtl.evaluation.metrics import binary_metrics, choose_threshold
from medtl.evaluation.uncertainty import intervals

REPORTED = ("sensitivity", "specificity")


def parse(spec: str, where: str = "--threshold") -> tuple[str, float | None]:
    """`threshold_spec`, refused in one line naming `where` and the valid forms."""
    try:
        return threshold_spec(spec)
    except ValueError:
        raise MedtlError(f"{where} {spec!r} is not an operating point; valid: {THRESHOLD_HELP}") from None


def choose(y: np.ndarray, p: np.ndarray, spec: str, where: str = "--threshold") -> float:
    """The threshold `spec` picks on these labelled positive-class probabilities (validation, or a site's
    calibration part); positive means p >= threshold."""
    kind, value = parse(spec, where)
    if kind in ("youden", "f1", "fixed"):
        return choose_threshold(y, p, str(value) if kind == "fixed" else kind)
    y = np.asarray(y).astype(int)
    if len(set(y.tolist())) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    if kind == "sensitivity":  # thresholds fall along the curve: the first reaching the target is the most specific
        i = int(np.flatnonzero(tpr >= value - 1e-12)[0])
    else:  # the last one keeping specificity >= target is the most sensitive
        i = int(np.flatnonzero(1 - fpr >= value - 1e-12)[-1])
    return _between(np.asarray(p), float(min(thr[i], 1.0)))


def _between(p: np.ndarray, cut: float) -> float:
    """Halfway from `cut` down to the next lower score: the same decisions here, robust to rounding elsewhere
    (as `metrics.choose_threshold` does)."""
    below = p[p < cut]
    return float((cut + below.max()) / 2) if len(below) else cut


def rates(y: np.ndarray, p: np.ndarray, threshold: float, resamples: int, seed: int = 0) -> dict:
    """{sensitivity, specificity, ..._ci95} at `threshold`: what the operating point reaches on these data."""
    m = binary_metrics(y, p, threshold)
    ci = intervals(y, p, threshold, resamples, seed)
    return {**{k: m[k] for k in REPORTED}, **{f"{k}_ci95": ci.get(k) for k in REPORTED}, "n": m["n"]}


def operating_point(spec: str, threshold: float, chosen_on: str, val: tuple | None, data: tuple | None,
                    resamples: int, seed: int = 0) -> dict:
    """The record of an operating point: its spec, threshold, where it was chosen, and the rates it reaches on
    validation (`val` = (labels, probabilities)) and on the evaluated data (`data`), each with intervals."""
    try:
        kind, value = threshold_spec(spec)
    except ValueError:  # a run's threshold from before specs were checked here
        kind, value = "", None
    out = {"spec": spec, "threshold": float(threshold), "chosen_on": chosen_on}
    if kind in REPORTED:
        out["target"] = {kind: value}
    if val is not None:
        out["validation"] = rates(*val, threshold, resamples, seed)
    if data is not None:
        out["evaluated"] = rates(*data, threshold, resamples, seed)
    return out


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Net benefit of treating by the model, of treating everyone and of treating no one, at each threshold
    probability pt: TP/n - FP/n * pt / (1 - pt)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p)
    n = len(y)
    odds = thresholds / (1 - thresholds)
    positive = p[None, :] >= thresholds[:, None]
    tp = (positive & (y[None, :] == 1)).sum(1) / n
    fp = (positive & (y[None, :] == 0)).sum(1) / n
    prevalence = float(np.mean(y == 1)) if n else 0.0
    return {"threshold": thresholds, "model": tp - fp * odds, "treat_all": prevalence - (1 - prevalence) * odds,
            "treat_none": np.zeros_like(thresholds)}


DECISION_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
