"""Is a test split large enough? The expected 95 % interval width of sensitivity and specificity (Wilson score
interval on the positives and on the negatives) and of the AUC (Hanley & McNeil 1982 standard error, normal
interval) for the split's counts, and how many test images a target width needs at the split's prevalence.

Widths depend on the value measured: a stated sensitivity, specificity or AUC (the run's observed ones, for a
model card), else ASSUMED (a typical value for a useful classifier, said as assumed in the report).
"""

from __future__ import annotations

import math

from medtl.core.errors import MedtlError

Z = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
ASSUMED = 0.85  # sensitivity, specificity and AUC assumed when none is stated
MAX_IMAGES = 10_000_000  # the search for a needed count stops here


def wilson_width(p: float, n: int) -> float:
    """Width of the Wilson score interval for a proportion `p` observed on `n` cases; NaN for n = 0."""
    if n <= 0:
        return math.nan
    denom = 1 + Z * Z / n
    return 2 * Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom


def auc_width(auc: float, n_pos: int, n_neg: int) -> float:
    """Width of the normal 95 % interval of an AUC with the Hanley-McNeil standard error; NaN without both classes."""
    if n_pos <= 0 or n_neg <= 0:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return 2 * Z * math.sqrt(max(var, 0.0))


def _smallest(width, target: float) -> int | None:
    """The smallest n >= 1 with width(n) <= target (width decreasing in n); None past MAX_IMAGES."""
    if not width(MAX_IMAGES) <= target:
        return None
    lo, hi = 1, 1
    while not width(hi) <= target:
        lo, hi = hi + 1, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if width(mid) <= target else (mid + 1, hi)
    return lo


def sample_size_report(n_pos: int, n_neg: int, auc: float | None = None, target_width: float | None = None,
                       sensitivity: float | None = None, specificity: float | None = None) -> dict:
    """{metric: {value, assumed, width, [needed_positives|needed_negatives|needed_images]}} for sensitivity,
    specificity and AUC on `n_pos` positive and `n_neg` negative test images; with `target_width`, each metric's
    `needed_images` (total test images at this prevalence for that width) and `test_images_needed` (the most)."""
    if target_width is not None and not 0 < target_width < 1:
        raise MedtlError(f"target width {target_width:g} is out of range: give the width of a 95% interval "
                         "between 0 and 1, e.g. --target-width 0.05")
    n = n_pos + n_neg
    prevalence = n_pos / n if n else math.nan
    out: dict = {"n_pos": int(n_pos), "n_neg": int(n_neg), "prevalence": prevalence, "level": 0.95,
                 "target_width": target_width}
    stated = {"sensitivity": (sensitivity, n_pos, prevalence), "specificity": (specificity, n_neg, 1 - prevalence)}
    for name, (value, count, share) in stated.items():
        p = ASSUMED if value is None or math.isnan(value) else float(value)
        entry = {"value": p, "assumed": value is None or math.isnan(value), "width": wilson_width(p, count),
                 "method": "Wilson score interval"}
        if target_width:
            cases = _smallest(lambda k, p=p: wilson_width(p, k), target_width)
            entry["needed_cases"] = cases
            entry["needed_images"] = math.ceil(cases / share) if cases and share > 0 else None
        out[name] = entry
    a = ASSUMED if auc is None or math.isnan(auc) else float(auc)
    entry = {"value": a, "assumed": auc is None or math.isnan(auc), "width": auc_width(a, n_pos, n_neg),
             "method": "Hanley-McNeil standard error"}
    if target_width:
        entry["needed_images"] = _smallest(lambda k: auc_width(a, max(1, round(k * prevalence)),
                                                                 max(1, round(k * (1 - prevalence)))), target_width) \
            if 0 < prevalence < 1 else None
    out["auc"] = entry
    if target_width:
        needed = [out[m]["needed_images"] for m in ("sensitivity", "specificity", "auc")]
        out["test_images_needed"] = None if None in needed else max(needed)
    return out


def describe(report: dict, where: str = "test") -> list[str]:
    """The report as sentences: each metric's expected width, and the images a target width needs."""
    lines = []
    for m in ("sensitivity", "specificity", "auc"):
        e = report[m]
        how = "assumed" if e["assumed"] else "observed"
        width = "undefined (no image of a class)" if math.isnan(e["width"]) else f"{e['width']:.3f}"
        line = f"{where}: {m} ({how} {e['value']:.2f}): expected 95% interval width {width}"
        if report.get("target_width"):
            need = e.get("needed_images")
            line += (f"; a width of {report['target_width']:g} needs {need} test images at prevalence "
                     f"{report['prevalence']:.2f}" if need else "; no test size reaches the target width")
        lines.append(line)
    return lines


def for_labels(y, classes: list[str], target_width: float | None = None) -> dict:
    """`sample_size_report` of a split's labels: binary with class 1 positive; multiclass, each class against
    the rest (`per_class`)."""
    import numpy as np

    counts = np.bincount(np.asarray(y, dtype=int), minlength=len(classes))
    if len(classes) == 2:
        return {"positive": classes[1], **sample_size_report(int(counts[1]), int(counts[0]), None, target_width)}
    return {"per_class": {c: sample_size_report(int(counts[k]), int(counts.sum() - counts[k]), None, target_width)
                          for k, c in enumerate(classes)}}


def describe_split(report: dict | None) -> list[str]:
    """`describe` of a `for_labels` report (per class for a multiclass split); nothing for None."""
    if not report:
        return []
    if "per_class" in report:
        return [line for c, r in report["per_class"].items() for line in describe(r, f"test, {c} vs the rest")]
    return describe(report, f"test ({report['positive']} positive)")
