"""What a run folder holds besides the checkpoint: metrics JSON, per-epoch CSV, curves PNG, config, log."""

from __future__ import annotations

import logging
from pathlib import Path

from medtl.core.io import clean, write_csv
from medtl.evaluation.metrics import class_table, decide

log = logging.getLogger(__name__)


def write_history(path: Path, history: list[dict]) -> None:
    if history:
        write_csv(path, list(history[0]), clean(history))


def format_metrics(name: str, m: dict) -> str:
    """One line of the headline metrics with their 95 % intervals; undefined values (NaN, or None as NaN reads
    back from metrics.json, e.g. the recall of a class absent from the split) print as 'undefined'."""
    ci = m.get("ci95") or {}

    def f(key: str) -> str:
        low_high = ci.get(key)
        interval = f" [{_number(low_high[0], 3)}, {_number(low_high[1], 3)}]" if low_high else ""
        return _number(m.get(key), 4) + interval
    keys = ("accuracy", "auc", "sensitivity", "specificity", "precision", "f1", "gmean", "loss")
    line = f"{name}: " + ", ".join(f"{k} {f(k)}" for k in keys)
    if "calibration" in m:
        cal = m["calibration"] or {}
        line += f", ECE {_number(cal.get('ece'), 4)}, Brier {_number(cal.get('brier'), 4)}"
    if m.get("interval_unit") == "patient":
        line += " (intervals resample patients)"
    if "keys" in m:
        line += f" ({m['keys']} patient keys, {m['images']} images)"
    if "removed" in m:
        line += f" ({m['removed']} test images with a copy in train left out)"
    if m.get("per_class"):
        line += "; per class recall " + ", ".join(f"{c} {_number((d or {}).get('recall'), 3)}"
                                                  for c, d in m["per_class"].items())
    return line


def _number(value, digits: int) -> str:
    """`value` with `digits` decimals; 'undefined' for None, NaN or infinity."""
    value = clean(value)
    return "undefined" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def write_key_predictions(path: Path, scores, classes: list[str], threshold: float) -> None:
    """Per-key results of a split (`patient_level.KeyScores`): the key (a pseudonym unless revealed), its
    images, its label, the predicted label, one probability column per class."""
    table = class_table(scores.probs)
    predicted = decide(table, threshold)
    write_csv(path, ["patient", "images", "label", "predicted", *[f"prob_{c}" for c in classes]],
              ([key, int(n), classes[int(y)], classes[int(k)], *[f"{v:.6f}" for v in row]]
               for key, n, y, k, row in zip(scores.keys, scores.images, scores.labels, predicted, table)))


def write_predictions(path: Path, refs: list[str], labels, probs, classes: list[str], threshold: float) -> None:
    """Per-image results of a split: path, true label, predicted label, one probability column per class."""
    table = class_table(probs)
    predicted = decide(table, threshold)
    write_csv(path, ["path", "label", "predicted", *[f"prob_{c}" for c in classes]],
              ([ref, classes[int(y)], classes[int(k)], *[f"{v:.6f}" for v in row]]
               for ref, y, k, row in zip(refs, labels, predicted, table)))
