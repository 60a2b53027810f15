"""The finalize phase, the one owner of what gets scored: after every choice (auto's strategy, the mirror,
calibration) test is scored once (training/scoring.py); then the run's metrics, predictions, checkpoint and
figures are written, metrics.json last (its presence marks a finished run)."""

from __future__ import annotations

import logging
import time

from medtl.core.environment import environment
from medtl.core.io import write_json
from medtl.core.runfolder import RunFolder
from medtl.evaluation.figures import plot_confusions, plot_curves, plot_reliability
from medtl.evaluation.records import RunMetrics
from medtl.evaluation.report import format_metrics, write_history, write_predictions
from medtl.data.image_keys import ImageKeys, without_copies, write_image_keys
from medtl.evaluation.splits_report import split_report
from medtl.models.checkpoint import Checkpoint
from medtl.training.prepare import Prepared
from medtl.training.reference import save_reference
from medtl.training.scoring import Scored, score
from medtl.training.train import Trained

log = logging.getLogger(__name__)


def finalize(trained: Trained, folder: RunFolder | None, progress: bool, began: float) -> RunMetrics | None:
    """Score the chosen model (every process takes its share) and, with `folder` (rank 0), write the run's
    results there; returns its metrics (None without a folder). `began`: `time.perf_counter()` when training
    began (train_seconds counts to the end of scoring)."""
    if folder is not None and trained.auto:
        write_json(folder.auto, trained.auto)
    scored = score(trained, progress)
    if folder is None:
        return None
    return _write(scored, folder, time.perf_counter() - began)


def _write(scored: Scored, folder: RunFolder, seconds: float) -> RunMetrics:
    """Predictions, checkpoint, history, figures, then metrics.json."""
    p, model, result = scored.trained.p, scored.trained.model, scored.trained.result
    classes, threshold = p.splits.classes, scored.threshold
    keys = write_image_keys(folder, p.splits, p.facts)  # what `medtl evaluate` finds copies of, elsewhere
    splits = _split_reports(p, scored, threshold, keys)
    for split, m in splits.items():
        log.info(format_metrics(split, m))
    for split, (pr, y) in scored.scores.items():
        write_predictions(folder.predictions(split), p.splits.refs[split], y, pr, classes, threshold)
    save_reference(p, model, folder.path, val_probs=scored.scores["val"].probs)  # shift and referral, later
    ckpt = Checkpoint(model.state_dict(), p.cfg, classes, threshold, p.preprocess, p.spec.name, scored.temperature)
    digest = ckpt.save(folder.checkpoint)
    write_history(folder.history, result.history)
    title = f"{p.spec.name} {p.cfg.model.strategy}"
    plot_curves(folder.curves, result.history, title)
    plot_reliability(folder.reliability, splits, title)
    plot_confusions(folder.confusion, splits, classes)
    metrics = RunMetrics(result.best_epoch, len(result.history), seconds, threshold, p.cfg.eval.threshold, classes,
                         p.size, {s: len(r) for s, r in p.splits.refs.items()}, splits, scored.temperature, digest,
                         scored.uncalibrated, scored.trained.auto, scored.tta,
                         environment("when the run was trained"))
    metrics.write(folder.metrics)  # last: its presence marks a finished run (studies resume on it)
    log.info("training took %.1f s; best epoch %d; threshold %.4f (chosen on validation by %s)",
             seconds, result.best_epoch, threshold, p.cfg.eval.threshold)
    return metrics


def _split_reports(p: Prepared, scored: Scored, threshold: float, keys: ImageKeys) -> dict:
    """Every evaluated split (with its subgroups, data.subgroups), and `test_deduplicated` when the given test
    split holds exact or near copies (perceptual hash) of train or validation images: those left out."""
    n, seed, classes = p.cfg.eval.bootstrap, p.cfg.train.seed, p.splits.classes
    out = {s: split_report(y, pr, classes, threshold, n, seed, p.splits.attributes_of(s))
           for s, (pr, y) in scored.scores.items()}
    if "test" in scored.scores and p.splits.carved.get("test") is None:
        kept, _, counts = without_copies(p.splits.refs["test"], keys, p.facts)
        if 0 < len(kept) < len(p.splits.refs["test"]):
            pr, y = scored.scores["test"].subset(kept)
            groups = {c: [v[i] for i in kept] for c, v in p.splits.attributes_of("test").items()}
            out["test_deduplicated"] = {**split_report(y, pr, classes, threshold, n, seed, groups),
                                        "removed": len(p.splits.refs["test"]) - len(kept), "copies": counts}
    return out
