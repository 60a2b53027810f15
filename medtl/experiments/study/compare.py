"""A study's report: mean ± std over seeds per configuration, paired tests against a reference, figures.

Writes `report.csv`, `report.md` and `report.html` (figures under `figures/`) in the study folder.
Each configuration is tested against the study's reference (`compare_to`; scratch unless named), paired on the
same test images: McNemar's exact test on correct/incorrect per image (per seed),
and a bootstrap 95 % interval of the AUC difference (images resampled; AUC averaged over seeds).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from medtl.core.config import RunConfig
from medtl.core.config.yaml_io import parse_yaml
from medtl.core.config.renames import renamed_key
from medtl.core.config.values import dotted_value
from medtl.core.errors import MedtlError
from medtl.core.runfolder import RunFolder, StudyFolder
from medtl.evaluation.records import RunMetrics

# test metrics, then validation's AUC and loss as each run reports them (after its test-time augmentation and
# calibration, if any; epochs and auto's candidates were chosen on plain validation scores), then the time
METRICS = ("loss", "accuracy", "precision", "sensitivity", "specificity", "f1", "gmean", "auc", "val_auc", "val_loss",
           "train_seconds")
LOWER_IS_BETTER = {"loss", "val_loss", "train_seconds"}
BOOTSTRAP = 1000


@dataclass
class Run:
    folder: Path
    group: tuple[tuple[str, str], ...]  # the grid values except the seed
    seed: int
    test: dict
    seconds: float
    history: list[dict]
    labels: np.ndarray  # test labels (class index)
    probs: np.ndarray  # (N, K) test probabilities
    predicted: np.ndarray  # class index per test image (the run's threshold)
    classes: list[str]
    val: dict = field(default_factory=dict)  # validation metrics (metrics.json splits.val)


def load_runs(study_root: Path) -> tuple[dict, list[Run]]:
    study = StudyFolder(study_root)
    meta = parse_yaml(study.spec.read_text(encoding="utf-8"), str(study.spec))
    keys = [renamed_key(k) for k in meta["grid"] if k != "train.seed"]  # a study of older keys: as runs hold them
    runs = []
    folders = [RunFolder(f) for f in sorted(study.runs.iterdir())] if study.runs.is_dir() else []
    for folder in folders:
        if not folder.finished:
            continue
        cfg = RunConfig.upgrade(parse_yaml(folder.config.read_text(encoding="utf-8"), str(folder.config)),
                                str(folder.config))
        group = tuple((k, str(dotted_value(cfg, k))) for k in keys)
        runs.append(_load_run(folder, group, int(cfg["train"]["seed"])))
    return meta, runs


def _load_run(folder: RunFolder, group, seed: int) -> Run:
    metrics = RunMetrics.of_run(folder)
    with open(folder.history, newline="") as f:
        history = [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
    with open(folder.predictions("test"), newline="") as f:
        rows = list(csv.DictReader(f))
    classes = metrics.classes
    index = {c: i for i, c in enumerate(classes)}
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return Run(folder.path, group, seed, metrics.splits["test"], metrics.train_seconds, history=history,
               labels=np.array([index[r["label"]] for r in rows]), probs=probs,
               predicted=np.array([index[r["predicted"]] for r in rows]),
               classes=classes, val=metrics.splits.get("val") or {})


def summarize(runs: list[Run]) -> list[dict]:
    """One row per configuration: n seeds, and mean/std of each metric over seeds."""
    rows = []
    for group, members in by_group(runs).items():
        row = {k.split(".")[-1]: v for k, v in group}
        row["seeds"] = len(members)
        for m in METRICS:
            values = np.array([_value(r, m) for r in members], float)
            row[f"{m}_mean"] = float(np.nanmean(values)) if not np.isnan(values).all() else math.nan
            row[f"{m}_std"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else math.nan
        rows.append(row)
    return rows


def _value(run: Run, metric: str) -> float:
    if metric == "train_seconds":
        return run.seconds
    return _num(run.val.get(metric[4:]) if metric.startswith("val_") else run.test.get(metric))


def _num(value) -> float:
    return math.nan if value is None else float(value)


def best_marks(rows: list[dict]) -> dict[str, set[int]]:
    """metric -> indices of the best rows (lowest for loss/time, highest otherwise; ties all marked)."""
    marks = {}
    for m in METRICS:
        values = np.array([r[f"{m}_mean"] for r in rows], float)
        if np.isnan(values).all():
            continue
        best = np.nanmin(values) if m in LOWER_IS_BETTER else np.nanmax(values)
        marks[m] = {i for i, v in enumerate(values) if abs(v - best) <= 1e-12}
    return marks


SCRATCH = {"model.strategy": "scratch"}  # the reference when a study names none: transfer vs scratch


def paired_tests(runs: list[Run], reference: dict[str, str] | None = None, seed: int = 0) -> list[dict]:
    """Each configuration against the reference configuration with the same other settings (`reference`:
    dotted grid key -> value; default scratch), on the same test images."""
    reference = {k: str(v) for k, v in (reference or SCRATCH).items()}
    out = []
    rng = np.random.default_rng(seed)
    groups = by_group(runs)
    for group, members in groups.items():
        if is_reference(group, reference):
            continue
        ref_group = _reference_for(group, set(groups), reference)
        if ref_group is None:
            continue
        pairs = _pair_by_seed(members, groups[ref_group])
        if not pairs:
            continue
        out.append({"configuration": label(group), "reference": label(ref_group), "seeds": len(pairs),
                    "mcnemar_p": [_mcnemar(a, b) for a, b in pairs], **_auc_difference(pairs, rng)})
    return out


def is_reference(group, reference: dict[str, str]) -> bool:
    """The group holds the reference values (a group without a reference key never does)."""
    values = dict(group)
    return all(values.get(k) == v for k, v in reference.items())


def _reference_for(group, groups: set, reference: dict[str, str]) -> tuple | None:
    """The reference configuration with the same settings; failing that, the same but for the learning rate."""
    if not set(reference) <= set(dict(group)):
        return None
    exact = tuple((k, reference.get(k, v)) for k, v in group)
    if exact in groups:
        return exact
    loose = [g for g in groups if is_reference(g, reference) and all(
        v == dict(g).get(k) for k, v in group if k not in reference and k != "train.lr")]
    return sorted(loose)[0] if loose else None


def _pair_by_seed(members: list[Run], reference: list[Run]) -> list[tuple[Run, Run]]:
    by_seed = {r.seed: r for r in reference}
    pairs = [(t, by_seed[t.seed]) for t in members if t.seed in by_seed]
    for a, b in pairs:
        if not np.array_equal(a.labels, b.labels):
            raise MedtlError(f"{a.folder} and {b.folder} were tested on different images; cannot pair them. "
                             "Give every run of a study the same data (the grid must not change the test split)")
    return pairs


def _mcnemar(a: Run, b: Run) -> float:
    right_a, right_b = a.predicted == a.labels, b.predicted == b.labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))


def _auc_difference(pairs: list[tuple[Run, Run]], rng: np.random.Generator) -> dict:
    labels = pairs[0][0].labels
    def diff(idx):
        return float(np.mean([_auc(labels[idx], a.probs[idx]) - _auc(labels[idx], b.probs[idx]) for a, b in pairs]))
    point = diff(np.arange(len(labels)))
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]  # stratified: every class in every draw
    boots = np.array([diff(np.concatenate([rng.choice(m, len(m)) for m in by_class])) for _ in range(BOOTSTRAP)])
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {"auc_difference": point, "auc_ci_low": float(lo), "auc_ci_high": float(hi)}


def by_group(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs by configuration (grid values but the seed), in the order first seen."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


def label(group) -> str:
    """A configuration's name in tables and legends: its grid values (backbone and strategy bare); "the base
    config" for a grid that varies the seed only (an empty name is no legend entry)."""
    return " ".join(f"{v}" if k in ("model.backbone", "model.strategy") else f"{k.split('.')[-1]}={v}"
                    for k, v in group) or "the base config"
