"""Medical classification metrics on scikit-learn, with undefined values reported as undefined.

A value that cannot be computed (AUC with one class present, precision with no positive
prediction) is NaN here and `null` in JSON, never a silent 0.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

THRESHOLD_METHODS = ("youden", "f1")


def class_table(probs) -> np.ndarray:
    """(N, K) class probabilities; a binary model's positive-class vector (N,) becomes [1 - p, p]."""
    probs = np.asarray(probs)
    return np.stack([1 - probs, probs], 1) if probs.ndim == 1 else probs


def decide(table: np.ndarray, threshold: float) -> np.ndarray:
    """Class index per row of a `class_table`: positive at `threshold` for two classes, argmax otherwise."""
    return (table[:, 1] >= threshold).astype(int) if table.shape[1] == 2 else table.argmax(1)


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _loss(y: np.ndarray, probs: np.ndarray) -> float:
    eps = 1e-7
    if probs.ndim == 1:
        p = np.clip(probs, eps, 1 - eps)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1))))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """Metrics of positive-class probabilities `p` (class 1 = positive) at `threshold`."""
    y = np.asarray(y).astype(int)
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    f1 = _div(2 * prec * sens, prec + sens) if not (math.isnan(prec) or math.isnan(sens)) else math.nan
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else math.nan
    return {
        "n": int(len(y)), "threshold": float(threshold), "loss": _loss(y, np.asarray(p, dtype=np.float64)),
        "accuracy": _div(tp + tn, len(y)), "precision": prec, "npv": _div(tn, tn + fn), "recall": sens,
        "sensitivity": sens,
        "specificity": spec, "f1": f1, "gmean": math.sqrt(sens * spec) if not math.isnan(sens * spec) else math.nan,
        "auc": auc, "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Macro-averaged and per-class metrics of softmax `probs` (N, K), prediction = argmax."""
    y = np.asarray(y).astype(int)
    k = len(classes)
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    per_class = {}
    for c, name in enumerate(classes):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        tn = cm.sum() - tp - fn - fp
        prec, rec = _div(tp, tp + fp), _div(tp, tp + fn)
        present = (y == c).any() and (y != c).any()
        per_class[name] = {
            "support": int(cm[c].sum()), "precision": prec, "npv": _div(tn, tn + fn), "recall": rec,
            "specificity": _div(tn, tn + fp),
            "f1": _div(2 * prec * rec, prec + rec) if not math.isnan(prec + rec) else math.nan,
            "auc": float(roc_auc_score(y == c, probs[:, c])) if present else math.nan,  # absent: skipped
        }
    recalls = [v["recall"] for v in per_class.values()]
    return {
        "n": int(len(y)), "loss": _loss(y, probs), "accuracy": float((pred == y).mean()),
        **{m: _nanmean([v[m] for v in per_class.values()]) for m in ("precision", "recall", "specificity", "f1", "auc")},
        "sensitivity": _nanmean(recalls),
        "gmean": float(np.prod(recalls) ** (1 / k)) if not any(math.isnan(r) for r in recalls) else math.nan,
        "confusion_matrix": cm.tolist(), "per_class": per_class,
    }


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def score(y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict:
    """Binary metrics when `probs` is 1-D, multiclass otherwise."""
    if probs.ndim == 1:
        return binary_metrics(y, probs, threshold)
    return multiclass_metrics(y, probs, classes)


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str) -> float:
    """Operating point for a binary model, chosen on validation data.

    youden: maximises sensitivity + specificity - 1; f1: maximises F1; a number: used as given.
    """
    try:
        return float(method)
    except ValueError:
        pass
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold '{method}': use one of {', '.join(THRESHOLD_METHODS)} or a number")
    if len(set(np.asarray(y).tolist())) < 2:
        return 0.5
    if method == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        return _between(p, float(min(thr[int(np.argmax(tpr - fpr))], 1.0)))
    prec, rec, thr = precision_recall_curve(y, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * prec[:-1] * rec[:-1] / (prec[:-1] + rec[:-1])
    return _between(p, float(thr[int(np.nanargmax(f1))]))


def _between(p: np.ndarray, cut: float) -> float:
    """Halfway from the score `cut` (positive: p >= cut) down to the next lower score: the same decisions on
    these scores, but a rounding-level change in a score (another batch size, another machine) cannot flip
    the case the cut was drawn at."""
    p = np.asarray(p)
    below = p[p < cut]
    return float((cut + below.max()) / 2) if len(below) else cut
