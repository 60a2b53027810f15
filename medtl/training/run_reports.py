"""What a finished run reports of its splits: each evaluated split's report (with its subgroups, and
`test_deduplicated` when the given test split holds copies of training or validation images; intervals over
patients when the data name them), the same per patient key, and the figures drawn from them (training curves,
reliability, confusion matrices)."""

from __future__ import annotations

from medtl.core.runfolder import RunFolder
from medtl.data.image_keys import ImageKeys, without_copies
from medtl.evaluation.figures import plot_confusions, plot_curves, plot_reliability
from medtl.evaluation.patient_level import KeyScores, aggregate, fit_rule, key_report
from medtl.evaluation.splits_report import split_report
from medtl.training.prepared import Prepared, Scored


def split_reports(p: Prepared, scored: Scored, threshold: float, keys: ImageKeys) -> dict:
    """Every evaluated split (with its subgroups, data.subgroups), and `test_deduplicated` when the given test
    split holds exact or near copies (perceptual hash) of train or validation images: those left out."""
    n, seed, classes = p.cfg.eval.bootstrap, p.cfg.train.seed, p.splits.classes
    out = {s: split_report(y, pr, classes, threshold, n, seed, p.splits.attributes_of(s), _clusters(p, s))
           for s, (pr, y) in scored.scores.items()}
    if "test" in scored.scores and p.splits.carved.get("test") is None:
        kept, _, counts = without_copies(p.splits.refs["test"], keys, p.facts)
        if 0 < len(kept) < len(p.splits.refs["test"]):
            pr, y = scored.scores["test"].subset(kept)
            groups = {c: [v[i] for i in kept] for c, v in p.splits.attributes_of("test").items()}
            clusters = _clusters(p, "test")
            clusters = None if clusters is None else [clusters[i] for i in kept]
            out["test_deduplicated"] = {**split_report(y, pr, classes, threshold, n, seed, groups, clusters),
                                        "removed": len(p.splits.refs["test"]) - len(kept), "copies": counts}
    return out


def _clusters(p: Prepared, split: str) -> list[str] | None:
    """Each image's patient key (an image without one is its own), or None when the data name no patients."""
    groups = p.splits.groups
    return [groups.get(r, r) for r in p.splits.refs[split]] if groups else None


def patient_results(p: Prepared, scored: Scored) -> tuple[dict, dict[str, KeyScores]]:
    """({rule, threshold, chosen_on, splits: {split: key-level report}}, {split: KeyScores}) when the data name
    patients; ({}, {}) otherwise. The rule and threshold are chosen on validation keys."""
    if not p.splits.groups:
        return {}, {}
    val_p, val_y = scored.scores["val"]
    rule = fit_rule(_clusters(p, "val"), val_y, val_p, p.cfg.eval.threshold, p.binary)
    by_key = {s: aggregate(_clusters(p, s), y, pr, rule.rule) for s, (pr, y) in scored.scores.items()}
    reports = {s: key_report(k, p.splits.classes, rule, p.cfg.eval.bootstrap, p.cfg.train.seed)
               for s, k in by_key.items()}
    return {**rule.record(), "splits": reports}, by_key


def plot_run(folder: RunFolder, history: list, splits: dict, title: str, classes: list[str]) -> None:
    """curves.png (the training curves), reliability.png and confusion.png in the run folder."""
    plot_curves(folder.curves, history, title)
    plot_reliability(folder.reliability, splits, title)
    plot_confusions(folder.confusion, splits, classes)
