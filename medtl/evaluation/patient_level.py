"""Results per patient (or study) key: a radiologist reads a patient, not an image.

A key's probability aggregates its images' by a rule: `mean`, `max`, or the mean of the top 3 (`top3`; binary:
of P(positive); multiclass: per class, then renormalised). The rule is chosen on validation by the key-level
log loss (a proper score: it rewards calibrated, separating probabilities alike), and a two-class run's key-level
threshold by the run's `eval.threshold` rule on validation keys; both are recorded and applied unchanged to
test and to `medtl evaluate`. A key's label is its images' most frequent label (a tie: the later class, for a
two-class run the positive one). Each key is one unit, so the intervals over keys are a cluster bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtl.evaluation import operating
from medtl.evaluation.metrics import class_table
from medtl.evaluation.splits_report import split_report

RULES = ("mean", "max", "top3")
TOP = 3
CHOSEN_ON = "validation: the lowest key-level log loss"


@dataclass(frozen=True)
class KeyScores:
    """One split's scores per key, in order of each key's first image."""

    keys: list[str]
    labels: np.ndarray  # per key
    probs: np.ndarray  # binary: P(positive) (P,); multiclass (P, K)
    images: np.ndarray  # images per key
    mixed: int  # keys whose images carry more than one label


def aggregate(keys: list[str], y: np.ndarray, probs: np.ndarray, rule: str) -> KeyScores:
    """The scores of each key of `keys` (one per image) by `rule`."""
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    table, y = class_table(probs), np.asarray(y).astype(int)
    binary = table.shape[1] == 2
    rows, labels, mixed = [], [], 0
    for members in order.values():
        part = table[members][:, 1:] if binary else table[members]
        rows.append(_combine(part, rule))
        counts = np.bincount(y[members], minlength=table.shape[1])
        labels.append(int(np.flatnonzero(counts == counts.max())[-1]))
        mixed += int((counts > 0).sum() > 1)
    out = np.array(rows)
    probs_out = out[:, 0] if binary else out / out.sum(1, keepdims=True)
    return KeyScores(list(order), np.array(labels), probs_out, np.array([len(m) for m in order.values()]), mixed)


def _combine(part: np.ndarray, rule: str) -> np.ndarray:
    if rule == "mean":
        return part.mean(0)
    if rule == "max":
        return part.max(0)
    return np.sort(part, axis=0)[-TOP:].mean(0)


def log_loss(scores: KeyScores) -> float:
    table = class_table(scores.probs)
    return float(-np.mean(np.log(np.clip(table[np.arange(len(scores.labels)), scores.labels], 1e-12, 1))))


def choose_rule(keys: list[str], y: np.ndarray, probs: np.ndarray) -> tuple[str, dict[str, float], KeyScores]:
    """(the rule with the lowest key-level log loss on these (validation) images, {rule: loss}, the keys' scores
    by that rule)."""
    scores = {rule: aggregate(keys, y, probs, rule) for rule in RULES}
    losses = {rule: log_loss(s) for rule, s in scores.items()}
    rule = min(RULES, key=lambda r: (losses[r], RULES.index(r)))
    return rule, losses, scores[rule]


@dataclass(frozen=True)
class KeyRule:
    """How image scores become key scores: the rule, the key-level threshold, and where both were chosen."""

    rule: str
    threshold: float
    chosen_on: str
    losses: dict[str, float]

    def record(self) -> dict:
        return {"rule": self.rule, "threshold": self.threshold, "chosen_on": self.chosen_on,
                "validation_log_loss": self.losses}

    @classmethod
    def of_record(cls, record: dict) -> "KeyRule":
        return cls(str(record["rule"]), float(record["threshold"]), str(record["chosen_on"]),
                   dict(record.get("validation_log_loss") or {}))


def fit_rule(keys: list[str], y: np.ndarray, probs: np.ndarray, spec: str, binary: bool) -> KeyRule:
    """The rule and (binary) the threshold by `spec` (eval.threshold), both on validation keys."""
    rule, losses, val = choose_rule(keys, y, probs)
    cut = operating.choose(val.labels, val.probs, spec, "eval.threshold") if binary else 0.5
    return KeyRule(rule, float(cut), f"{CHOSEN_ON}; threshold by eval.threshold {spec!r} on validation keys", losses)


def key_report(scores: KeyScores, classes: list[str], rule: KeyRule, resamples: int, seed: int) -> dict:
    """`split_report` of the keys (intervals resample keys), with the key and image counts."""
    m = split_report(scores.labels, scores.probs, classes, rule.threshold, resamples, seed)
    m.update({"keys": len(scores.keys), "images": int(scores.images.sum()), "keys_with_mixed_labels": scores.mixed})
    return m
