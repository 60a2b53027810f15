"""Metrics under bootstrap weights: a resample is a count per image (how often it was drawn), so many resamples are
one (B, N) weight matrix, and a metric of any subset (a subgroup, the images of one seed) under every resample is
a weighted sum: no index arrays of varying length. Used for the paired subgroup gaps and for intervals pooled
over a study's seeds.

`weighted_metrics` with all weights 1 gives the plain metrics: the same definitions as `metrics.score` (binary:
class 1 positive at the run's threshold; multiclass: macro averages over the classes with a defined value).
"""

from __future__ import annotations

import numpy as np


BINARY = ("accuracy", "sensitivity", "specificity", "precision", "npv", "auc")
MULTICLASS = ("accuracy", "sensitivity", "specificity", "precision", "auc")
CHUNK = 4_000_000  # weights held at once (replicates x rows): about 32 MB per array


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, NaN where b is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def nanmean(rows: list[np.ndarray]) -> np.ndarray:
    """Mean over the defined values of each column; NaN where none is defined."""
    stacked = np.stack(rows)
    defined = np.isfinite(stacked)
    return div(np.where(defined, stacked, 0).sum(0), defined.sum(0))


def class_weights(y: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, N) draw counts of a bootstrap that resamples each class separately (its size kept), as
    `uncertainty.intervals` does."""
    w = np.zeros((resamples, len(y)))
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        w[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return w


def over_replicates(y: np.ndarray, resamples: int, seed: int, fn, index: np.ndarray | None = None) -> dict:
    """{key: (resamples,) values}: `fn(w)` -> {key: (b,) values} over `resamples` class-stratified bootstrap
    weightings of the items labelled `y`, made CHUNK weights at a time; with `index`, row r of the data `fn`
    scores takes the weight of item index[r] (a cluster bootstrap: one test image predicted by several seeds)."""
    rng = np.random.default_rng(seed)
    rows = len(y) if index is None else len(index)
    step = max(1, CHUNK // max(1, rows))
    parts: dict = {}
    for start in range(0, max(0, resamples), step):
        w = class_weights(y, min(step, resamples - start), rng)
        for key, values in fn(w if index is None else w[:, index]).items():
            parts.setdefault(key, []).append(values)
    return {key: np.concatenate(v) for key, v in parts.items()}


def weighted_metrics(w: np.ndarray, y: np.ndarray, table: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: (B,) values} of labels `y`, class probabilities `table` (N, K) and decisions `pred` under the
    weights `w` (B, N); NaN where a metric is undefined (e.g. no positive image carries weight)."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    if table.shape[1] == 2:
        out = one_vs_rest(w, y == 1, pred == 1, table[:, 1])
        return {"accuracy": div((w * (pred == y)).sum(1), w.sum(1)), **{m: out[m] for m in BINARY[1:]}}
    per_class = [one_vs_rest(w, y == c, pred == c, table[:, c]) for c in range(table.shape[1])]
    macro = {m: nanmean([p[m] for p in per_class]) for m in MULTICLASS[1:]}
    return {"accuracy": div((w * (pred == y)).sum(1), w.sum(1)), **macro}


def one_vs_rest(w: np.ndarray, positive: np.ndarray, said: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    tp, fn = (w * (positive & said)).sum(1), (w * (positive & ~said)).sum(1)
    fp, tn = (w * (~positive & said)).sum(1), (w * (~positive & ~said)).sum(1)
    return {"sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp), "precision": div(tp, tp + fp),
            "npv": div(tn, tn + fn), "auc": weighted_auc(w, positive, score)}


def weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per weight row: the weighted share of (positive, negative) pairs ranked right, ties half."""
    if len(score) == 0:
        return np.full(len(w), np.nan)
    order = np.argsort(score, kind="stable")
    s, pos, w = score[order], positive[order], w[:, order]
    new = np.r_[True, s[1:] != s[:-1]]
    block = np.cumsum(new) - 1  # tie block of each image
    negatives = np.add.reduceat(w * ~pos, np.flatnonzero(new), axis=1)  # (B, blocks)
    below = np.cumsum(negatives, axis=1) - negatives  # negative weight strictly below each block
    credit = below[:, block] + 0.5 * negatives[:, block]
    w_pos = w * pos
    return div((w_pos * credit).sum(1), w_pos.sum(1) * (w * ~pos).sum(1))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """[low, high] over the defined values; None when none is."""
    v = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if len(v) else None
