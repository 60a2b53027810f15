"""Metrics per subgroup: the images of a split that share a value of a manifest column (sex, site, scanner).

Each value's images are scored as a split is (the metrics at the run's threshold and their 95 % bootstrap
intervals); a value whose images cannot be scored (fewer than `min_count`, or a class absent so that
sensitivity, specificity or AUC is undefined) is listed with the reason, never dropped. Per column, the largest
gap between the scored values of each of GAP_METRICS comes with a paired bootstrap interval: each replicate
resamples the split's images once (within each class, as the split's intervals do) and scores every value on that
same replicate, so the two values' estimates share their randomness as they share the model; the interval is of
the difference between the two values that are highest and lowest on the observed images. An interval that
covers 0 says this test split cannot tell the two apart.
"""

from __future__ import annotations

import numpy as np

from medtl.data.splits import MISSING_VALUE
from medtl.evaluation.metrics import class_table, decide, score
from medtl.evaluation.uncertainty import intervals
from medtl.evaluation.weighted import over_replicates, percentile_interval, weighted_metrics

GAP_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
MIN_COUNT = 10  # fewer images than this in a subgroup: named, not scored


def subgroup_report(labels, probs, classes: list[str], threshold: float, attributes_for_split: dict[str, list[str]],
                    n_boot: int = 1000, seed: int = 0, min_count: int = MIN_COUNT) -> dict:
    """{"subgroups": {column: {value: metrics}}, "subgroup_gaps": {column: {metric: gap}}} for one split.

    `attributes_for_split`: {column: the value of each image, in the order of `labels`} (`DataSplits.attributes_of`).
    A value's entry holds `n`, `counts` (per class) and `scored`; scored: the metrics and `ci95`; else `reason`."""
    y = np.asarray(labels).astype(int)
    probs = np.asarray(probs)
    groups, gaps = {}, {}
    for column, values in attributes_for_split.items():
        values = np.asarray(values, dtype=object)
        if len(values) != len(y):
            raise ValueError(f"subgroup column {column}: {len(values)} values for {len(y)} images")
        order = sorted(set(values.tolist()), key=lambda v: (v == MISSING_VALUE, v))
        groups[column] = {v: _entry(y[values == v], probs[values == v], classes, threshold, n_boot, seed, min_count)
                          for v in order}
        scored = [v for v in order if groups[column][v]["scored"]]
        gaps[column] = _gaps(y, probs, values, scored, threshold, n_boot, seed)
    return {"subgroups": groups, "subgroup_gaps": gaps}


def _entry(y: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float, n_boot: int, seed: int,
           min_count: int) -> dict:
    counts = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    reason = _unscorable(counts, len(y), min_count)
    if reason:
        return {"n": int(len(y)), "counts": counts, "scored": False, "reason": reason}
    m = score(y, probs, classes, threshold)
    m["ci95"] = intervals(y, probs, threshold, n_boot, seed)
    return {"counts": counts, "scored": True, **m}


def _unscorable(counts: dict[str, int], n: int, min_count: int) -> str:
    """Why a subgroup cannot be scored, or ''."""
    if n < min_count:
        return f"{n} image(s), fewer than {min_count}: too few to score"
    absent = [c for c, k in counts.items() if k == 0]
    classes = list(counts)
    if len(classes) == 2 and absent:
        undefined = "sensitivity" if absent[0] == classes[1] else "specificity"
        return f"no '{absent[0]}' image: {undefined} and AUC are undefined"
    if len(classes) - len(absent) < 2:
        present = next(c for c, k in counts.items() if k)
        return f"only '{present}' images: no metric that compares classes is defined"
    return ""


def _gaps(y: np.ndarray, probs: np.ndarray, values: np.ndarray, scored: list[str], threshold: float, n_boot: int,
          seed: int) -> dict:
    """{metric: {highest, lowest, values, gap, ci95}} over the scored values; or {"not_compared": why}."""
    if len(scored) < 2:
        return {"not_compared": f"{len(scored)} subgroup(s) could be scored; a gap needs two"}
    table = class_table(probs)
    pred = decide(table, threshold)
    masks = {v: (values == v).astype(float) for v in scored}
    observed = {v: weighted_metrics(masks[v][None, :], y, table, pred) for v in scored}

    def replicate(w: np.ndarray) -> dict:
        return {(v, m): got for v in scored for m, got in weighted_metrics(w * masks[v], y, table, pred).items()}
    boot = over_replicates(y, n_boot, seed, replicate)
    out = {}
    for m in GAP_METRICS:
        defined = {v: float(observed[v][m][0]) for v in scored if np.isfinite(observed[v][m][0])}
        if len(defined) < 2:
            out[m] = {"not_compared": f"{m} is defined in {len(defined)} subgroup(s)"}
            continue
        ranked = sorted(defined, key=defined.get)  # stable: equal values keep two distinct names
        lo, hi = ranked[0], ranked[-1]
        diff = boot[(hi, m)] - boot[(lo, m)] if boot else np.array([])
        out[m] = {"highest": hi, "lowest": lo, "values": [defined[hi], defined[lo]], "gap": defined[hi] - defined[lo],
                  "ci95": percentile_interval(diff)}
    return out
